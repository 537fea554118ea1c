"""Conversions between fedprune's plain dicts and Flower records (the only Flower-facing glue).

Numbers go in ``MetricRecord``s, strings in ``ConfigRecord``s, tensors in ``ArrayRecord``s. Nested
method state (``{"neq": {"vel/conv1": array}}``) is flattened with ``::`` (inner keys may hold ``/``).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord

from fedprune.config import flatten, unflatten

ARRAYS, MASK, METRICS, INFO, CONFIG = "arrays", "mask", "metrics", "info", "config"
FAILURE = "failure"  # a client's failure reply: {"client", "reason", "traceback"}
NUM_EXAMPLES = "num-examples"
SEP = "::"  # nesting separator of method state in records


def to_array_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Numpy arrays (keys kept, order kept) as an ``ArrayRecord``."""
    return ArrayRecord(array_dict={k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def from_array_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    """An ``ArrayRecord`` as numpy arrays."""
    return {k: v.numpy() for k, v in record.items()}


def split_metrics(metrics: Mapping[str, Any]) -> tuple[MetricRecord, ConfigRecord]:
    """Numbers (and lists of numbers) into a ``MetricRecord``, everything else as strings."""
    numbers: dict[str, Any] = {}
    texts: dict[str, Any] = {}
    for k, v in metrics.items():
        if isinstance(v, (bool, np.bool_)):
            numbers[k] = int(v)
        elif isinstance(v, (int, np.integer)):
            numbers[k] = int(v)
        elif isinstance(v, (float, np.floating)):
            numbers[k] = float(v)
        elif isinstance(v, (list, tuple)) and v and all(isinstance(x, (int, float)) for x in v):
            numbers[k] = [float(x) for x in v]
        elif v is not None:
            texts[k] = str(v)
    return MetricRecord(numbers), ConfigRecord(texts)


def join_metrics(metrics: MetricRecord | None, info: ConfigRecord | None) -> dict[str, Any]:
    """Inverse of ``split_metrics``: one flat dict."""
    out: dict[str, Any] = {}
    for record in (metrics, info):
        if record is not None:
            out.update(dict(record.items()))
    return out


def state_to_records(state: Mapping[str, Any]) -> tuple[ArrayRecord, ConfigRecord]:
    """Method state (nested dicts of arrays and scalars) as one array and one config record."""
    flat = flatten({k: dict(v) if isinstance(v, Mapping) else v for k, v in state.items()}, sep=SEP)
    arrays = {k: np.asarray(v) for k, v in flat.items() if isinstance(v, np.ndarray)}
    scalars = {k: (v.item() if hasattr(v, "item") else v) for k, v in flat.items()
               if not isinstance(v, np.ndarray) and v is not None}
    return to_array_record(arrays), ConfigRecord(scalars)


def records_to_state(arrays: ArrayRecord | None, scalars: ConfigRecord | None) -> dict[str, Any]:
    """Inverse of ``state_to_records`` (nesting restored)."""
    flat: dict[str, Any] = {}
    if arrays is not None:
        flat.update(from_array_record(arrays))
    if scalars is not None:
        flat.update(dict(scalars.items()))
    return unflatten(flat, sep=SEP)
