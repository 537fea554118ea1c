"""Beyond the zoo: torchvision classification models that torch-pruning can trace.

Small inputs (32 px) keep these fast. Covered structures: deep residual stacks
(resnet34), dense concatenations (densenet121), inception branches (googlenet),
squeeze-excitation multiplies (efficientnet_b0, mobilenet_v3_small) and grouped
convolutions, which stay dense with a reason (regnet_x_400mf).
"""

import numpy as np
import pytest
import torch
import torchvision.models as tvm

from fedprune.surgery import NeuronGraph, NeuronMask, SurgeryError
from fedprune.surgery.testing import outputs_close, randomize_constants


def build(name: str) -> torch.nn.Module:
    kwargs = {"aux_logits": False, "init_weights": False} if name == "googlenet" else {}
    torch.manual_seed(0)
    return randomize_constants(getattr(tvm, name)(weights=None, num_classes=10, **kwargs)).eval()


@pytest.mark.parametrize("name", ["resnet34", "densenet121", "googlenet", "efficientnet_b0",
                                  "mobilenet_v3_small", "regnet_x_400mf"])
def test_torchvision_compact_equals_masked_dense(name):
    model = build(name)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    g = NeuronGraph.from_model(model, x[:1])
    assert len(g.groups) >= 5
    mask = NeuronMask.random(g, 0.4, rng=0)
    small = g.compact(model, mask)
    outputs_close(small, g.zero_pruned(model, mask), x, atol=1e-5)
    sd = small.state_dict()
    back = g.compact_state_dict(g.expand(sd, mask), mask)
    assert all(torch.equal(sd[k], back[k]) for k in sd)
    if name == "densenet121":  # one conv reads many groups through the concatenations
        layer = "features.denseblock1.denselayer6.conv1"
        reads = [r for grp in g.groups for r in grp.layers if r.module == layer and r.role == "in"]
        assert len(reads) == 6  # the stem and five earlier dense layers
        assert sorted(np.concatenate([r.index for r in reads]).tolist()) == list(range(64 + 5 * 32))
        assert not g.extra_keys  # bias-free convs fold into the BatchNorms after the concat
    if name == "regnet_x_400mf":
        assert any("grouped conv" in why for why in g.unsupported.values())


def test_untraceable_model_raises_surgery_error():
    model = tvm.shufflenet_v2_x0_5(weights=None, num_classes=10)  # tp fails on channel shuffle
    with pytest.raises(SurgeryError, match="torch-pruning cannot trace"):
        NeuronGraph.from_model(model, torch.randn(1, 3, 32, 32))
