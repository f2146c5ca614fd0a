"""Error messages of the core, kept out of the logic."""

from __future__ import annotations

from typing import Iterable


def path_str(path: tuple[object, ...], root: str = "node") -> str:
    out = root
    for key in path:
        if isinstance(key, int):
            out += f"[{key}]"
        elif isinstance(key, str) and key.isidentifier():
            out += f".{key}"
        else:
            out += f"[{key!r}]"
    return out


def _paths(paths: Iterable[tuple[object, ...]], limit: int = 8) -> str:
    paths = list(paths)
    shown = ", ".join(path_str(p) for p in paths[:limit])
    if len(paths) > limit:
        shown += f", ... ({len(paths) - limit} more)"
    return shown


def missing_leaves(paths: Iterable[tuple[object, ...]]) -> str:
    return (
        f"merge: the states have no value for {_paths(paths)}, which the GraphDef "
        "expects. Pass every state that `split` returned, e.g. "
        "`nnx.merge(graphdef, params, rest)`."
    )


def unexpected_leaves(paths: Iterable[tuple[object, ...]]) -> str:
    return (
        f"merge: the states hold {_paths(paths)}, which the GraphDef does not "
        "have. The state was made for a different model; use the GraphDef that "
        "came from the same `split`, or filter the state first."
    )


def wrong_variable_type(path: tuple[object, ...], expected: type, got: type) -> str:
    return (
        f"merge: {path_str(path)} is a {expected.__name__} in the GraphDef but the "
        f"state holds a {got.__name__}. Use the state that `split` returned for "
        "this GraphDef."
    )


def non_exhaustive_split(paths: Iterable[tuple[object, ...]]) -> str:
    return (
        "Non-exhaustive filters, got a non-empty remainder: "
        f"split: {_paths(paths)} matched none of the filters. Add `...` as the "
        "last filter to collect the rest, e.g. `nnx.split(model, nnx.Param, ...)`."
    )


def ellipsis_not_last(position: int, count: int, shown: str = "...") -> str:
    return (
        "`...` or `True` can only be used as the last filters: "
        f"`{shown}` must be the last filter: it matches everything, so filters after "
        f"it (position {position} of {count}) would never match. Move `{shown}` to "
        "the end."
    )


def unhashable_static(path: tuple[object, ...], value: object) -> str:
    return (
        f"{path_str(path)} holds a {type(value).__name__}, which is neither an "
        "array, a Variable, a Module nor a pytree of them, so it is kept as a "
        "static value in the GraphDef, and static values must be hashable. "
        "Make it hashable (e.g. a tuple instead of a list of non-arrays, a frozen "
        "dataclass), or store it as an array / `nnx.Variable`."
    )


def unhashable_metadata(path: tuple[object, ...], name: str, value: object) -> str:
    return (
        f"{path_str(path)} has metadata {name}={type(value).__name__}, which is not "
        "hashable. Variable metadata lives in the GraphDef (a static, hashable "
        "value). Use a hashable value (a tuple, a string, a number), or store "
        "arrays as their own `nnx.Variable`."
    )


def bad_filter(f: object) -> str:
    return (
        f"{f!r} is not a filter. A filter is a Variable type, a tag string, `...`, "
        "True/False, a tuple of filters, one of nnx.PathContains/OfType/WithTag/"
        "All/Any/Not/Everything/Nothing, or a callable `(path, value) -> bool`."
    )


def update_missing_node(path: tuple[object, ...]) -> str:
    return (
        f"update: {path_str(path)} does not exist on the object and holds a nested "
        "state, so there is nothing to update it into. Create the sub-object "
        "first, or update with a state that came from this object."
    )


def update_in_tuple(path: tuple[object, ...]) -> str:
    return (
        f"update: {path_str(path)} sits directly in a tuple and holds a plain value, "
        "so it cannot be replaced in place. Pass a list instead of a tuple, or keep "
        "the value in a Variable or a Module."
    )


def cannot_pop(path: tuple[object, ...]) -> str:
    return (
        f"pop: {path_str(path)} lives inside a container that cannot lose an entry "
        "in place. Pop from a Module attribute, or rebuild the container yourself."
    )


def unknown_pure_path(path: tuple[object, ...]) -> str:
    return (
        f"replace_by_pure_dict: {path_str(path, 'state')} is not in the state. "
        "The dict was saved from a different model; compare "
        "`state.to_pure_dict()` with it to find the renamed or extra entries."
    )
