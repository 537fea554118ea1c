"""Neuron surgery: find prunable neuron groups, compact/expand models, simplify, export.

No Flower imports here. Typical use::

    graph = NeuronGraph.from_model(dense, example_input)   # once per architecture
    mask = NeuronMask.full(graph)                           # one bool vector per group
    small = graph.compact(dense, mask)                      # real smaller nn.Module
    dense_sd = graph.expand(small.state_dict(), mask)       # back to dense shapes
    final, mask, graph = simplify(dense, example_input)     # drop all-zero neurons

See ``docs/surgery.md`` for concepts, invariants and limitations.
"""

from .accounting import count_flops, count_params, format_neurons, model_bytes, neurons_per_layer
from .errors import FoldWarning, MaskError, SurgeryError
from .export import export_onnx
from .graph import NeuronGraph
from .groups import LayerRole, NeuronGroup
from .mask import NeuronMask
from .modules import FoldedConv2d
from .simplify import dead_neuron_mask, simplify

__all__ = [
    "NeuronGraph", "NeuronGroup", "LayerRole", "NeuronMask", "MaskError", "SurgeryError",
    "FoldWarning", "FoldedConv2d", "simplify", "dead_neuron_mask", "export_onnx",
    "count_params", "model_bytes", "count_flops", "neurons_per_layer",
    "format_neurons",
]
