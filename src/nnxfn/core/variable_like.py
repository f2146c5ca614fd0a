"""The contract between the core and boxed leaves (the facade's Variable).

The core never imports the facade. A boxed leaf type subclasses
`VariableLike` and provides:

- `raw_value`: the wrapped value (usually an array);
- `metadata_items()`: its metadata as a sorted tuple of `(name, value)` pairs,
  hashable, so it can live in a GraphDef;
- `from_parts(value, metadata)` (classmethod): build an instance without
  calling `__init__`;
- `adopt()`: called when `merge` puts this very object (not a copy) into a
  new graph, so the facade can treat it as belonging to the caller.
"""

from __future__ import annotations

from typing import Any

Metadata = tuple[tuple[str, object], ...]  # sorted (name, value) pairs, hashable


class VariableLike:
    __slots__ = ()

    raw_value: Any

    def metadata_items(self) -> Metadata:
        raise NotImplementedError

    @classmethod
    def from_parts(cls, value: Any, metadata: Metadata) -> VariableLike:
        raise NotImplementedError

    def set_raw(self, value: Any) -> None:
        raise NotImplementedError

    def adopt(self) -> None:
        """This object joins a graph `merge` builds (default: nothing to do)."""

    def set_metadata_items(self, metadata: Metadata) -> None:
        raise NotImplementedError


class DataLeaf:
    """A child value a graph node declares as one whole leaf, whatever its type
    (`self.count = nnx.data(0)`): the node's `children` returns it wrapped, the
    core puts `value` in the State (and gives it back unwrapped on merge)."""

    __slots__ = ("value",)

    def __init__(self, value: object):
        self.value = value
