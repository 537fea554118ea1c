"""``NeuronMask``: which neurons of each prunable group are alive.

A mask holds one boolean vector per :class:`~fedprune.surgery.NeuronGroup`, always
over the *dense reference* architecture (``mask[name].shape == (group.size,)``),
so masks from different clients can be compared, intersected and shipped as plain
numpy arrays.

Invariants (checked on construction, so a ``NeuronMask`` that exists is valid):

* the group names are exactly the graph's prunable groups, in the graph's order;
* every vector is a 1-D ``numpy.bool_`` array of the group's dense size;
* every group keeps at least one neuron (an empty group would disconnect the net).

Masks are immutable: ``mask[name]`` is a read-only view; build a new mask with
:meth:`NeuronMask.from_arrays` (e.g. from a modified :meth:`NeuronMask.to_arrays`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import MaskError

if TYPE_CHECKING:  # pragma: no cover
    from .graph import NeuronGraph

Spec = tuple[tuple[str, int], ...]


def _spec_of(graph_or_spec: "NeuronGraph | Spec") -> Spec:
    spec = getattr(graph_or_spec, "mask_spec", graph_or_spec)
    return tuple((str(n), int(s)) for n, s in spec)


class NeuronMask:
    """One boolean vector per prunable neuron group (``True`` = alive)."""

    __slots__ = ("_spec", "_alive")

    def __init__(self, graph_or_spec: "NeuronGraph | Spec", arrays: Mapping[str, Any]):
        """Validate ``arrays`` against the graph's groups; raise :class:`MaskError` if invalid."""
        self._spec: Spec = _spec_of(graph_or_spec)
        self._alive: dict[str, np.ndarray] = {}
        known = {name for name, _ in self._spec}
        unknown = sorted(set(arrays) - known)
        if unknown:
            raise MaskError(f"unknown neuron group(s) {unknown}; expected groups {sorted(known)}")
        for name, size in self._spec:
            if name not in arrays:
                raise MaskError(f"mask is missing neuron group {name!r} (size {size})")
            arr = np.asarray(arrays[name])
            if arr.dtype != np.bool_:
                raise MaskError(f"neuron group {name!r}: mask dtype must be bool, got {arr.dtype} "
                                "(convert with .astype(bool))")
            if arr.shape != (size,):
                raise MaskError(f"neuron group {name!r}: mask shape must be ({size},), "
                                f"got {arr.shape}")
            if not arr.any():
                raise MaskError(f"neuron group {name!r}: mask prunes all {size} neurons; "
                                "at least one must stay alive")
            arr = arr.copy()
            arr.flags.writeable = False
            self._alive[name] = arr

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def full(cls, graph_or_spec: "NeuronGraph | Spec") -> "NeuronMask":
        """The mask with every neuron alive (the dense reference)."""
        spec = _spec_of(graph_or_spec)
        return cls(spec, {n: np.ones(s, dtype=bool) for n, s in spec})

    @classmethod
    def from_arrays(cls, graph_or_spec: "NeuronGraph | Spec",
                    arrays: Mapping[str, Any]) -> "NeuronMask":
        """Rebuild a mask from :meth:`to_arrays` output (e.g. received in a Flower record).

        Raises :class:`MaskError` naming the group for an unknown or missing group, a
        wrong dtype (must be bool) or length, or a group with no alive neuron.
        """
        return cls(graph_or_spec, arrays)

    @classmethod
    def random(cls, graph_or_spec: "NeuronGraph | Spec", keep: float,
               rng: np.random.Generator | int | None = None) -> "NeuronMask":
        """A random mask keeping ``round(keep * size)`` neurons (at least one) per group."""
        if not 0.0 < keep <= 1.0:
            raise ValueError(f"keep must be in (0, 1], got {keep}")
        rng = np.random.default_rng(rng)
        arrays = {}
        for name, size in _spec_of(graph_or_spec):
            alive = np.zeros(size, dtype=bool)
            alive[rng.choice(size, size=max(1, round(keep * size)), replace=False)] = True
            arrays[name] = alive
        return cls(graph_or_spec, arrays)

    # -- access ---------------------------------------------------------------------------
    @property
    def spec(self) -> Spec:
        """``((group name, dense size), ...)`` in graph order."""
        return self._spec

    @property
    def names(self) -> list[str]:
        """Group names in graph order."""
        return [n for n, _ in self._spec]

    def __getitem__(self, name: str) -> np.ndarray:
        """The read-only alive vector of group ``name`` (dense length)."""
        try:
            return self._alive[name]
        except KeyError:
            raise MaskError(f"unknown neuron group {name!r}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self._spec)

    def items(self) -> Iterable[tuple[str, np.ndarray]]:
        """``(group name, read-only alive vector)`` pairs in graph order."""
        return self._alive.items()

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Writable copies of the alive vectors, keyed by group name (Flower-record friendly)."""
        return {n: a.copy() for n, a in self._alive.items()}

    def copy(self) -> "NeuronMask":
        """An equal, independent mask."""
        return NeuronMask(self._spec, self._alive)

    def alive_indices(self, name: str) -> np.ndarray:
        """Dense indices of the alive neurons of ``name`` (their order in a compact model)."""
        return np.flatnonzero(self[name])

    # -- counting -------------------------------------------------------------------------
    def num_alive(self, name: str | None = None) -> int:
        """Alive neurons in group ``name``, or over all groups when ``name`` is None."""
        if name is not None:
            return int(self[name].sum())
        return int(sum(int(a.sum()) for a in self._alive.values()))

    def num_total(self) -> int:
        """Neurons of all prunable groups in the dense reference."""
        return int(sum(s for _, s in self._spec))

    def alive_fraction(self) -> float:
        """Alive neurons / dense neurons, over all prunable groups."""
        return self.num_alive() / max(1, self.num_total())

    # -- algebra --------------------------------------------------------------------------
    def _check_compatible(self, other: object) -> "NeuronMask":
        if not isinstance(other, NeuronMask):
            raise TypeError(f"expected a NeuronMask, got {type(other).__name__}")
        if other._spec != self._spec:
            raise MaskError("masks belong to different neuron graphs (group names or sizes differ)")
        return other

    def __and__(self, other: "NeuronMask") -> "NeuronMask":
        """Intersection; raises :class:`MaskError` if it would empty a group."""
        other = self._check_compatible(other)
        return NeuronMask(self._spec, {n: self._alive[n] & other._alive[n] for n in self.names})

    def __or__(self, other: "NeuronMask") -> "NeuronMask":
        """Union (alive in either mask)."""
        other = self._check_compatible(other)
        return NeuronMask(self._spec, {n: self._alive[n] | other._alive[n] for n in self.names})

    def issubset(self, other: "NeuronMask") -> bool:
        """True when every neuron alive here is also alive in ``other``."""
        other = self._check_compatible(other)
        return all(not (self._alive[n] & ~other._alive[n]).any() for n in self.names)

    __le__ = issubset

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NeuronMask):
            return NotImplemented
        return self._spec == other._spec and all(
            np.array_equal(self._alive[n], other._alive[n]) for n in self.names)

    __hash__ = None  # type: ignore[assignment]  # mutable-looking container; compare with ==

    def __repr__(self) -> str:
        body = ", ".join(f"{n}: {int(a.sum())}/{a.size}" for n, a in self._alive.items())
        return f"NeuronMask({body})"
