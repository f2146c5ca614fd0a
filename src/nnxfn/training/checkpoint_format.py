"""The checkpoint format shared by both backends: flat leaves, metadata, matching.

A target's State is flattened to `(path, array)` leaves; the metadata lists
each leaf's path (JSON list of str/int keys), shape and dtype, so a restore
can name every missing, unexpected or mismatched path before reading any
array. Typed PRNG keys are stored as their uint32 key data.
"""

from __future__ import annotations

import json
import os
import typing as tp
from pathlib import Path

import jax
import numpy as np

from nnxfn.core import State, graphdef as graphdef_of, merge, state as state_of, update
from nnxfn.core.errors import path_str
from nnxfn.core.registry import is_registered_node
from nnxfn.facade.module import Module
from nnxfn.facade.variables import Variable

META = "nnxfn.json"
FORMAT = "nnxfn-checkpoint"
KeyPath = tuple[tp.Hashable, ...]  # str and int keys only, once `check_savable` passed
# An array leaf: a `jax.Array` or `np.ndarray` (a `jax.ShapeDtypeStruct` for an abstract
# target), read by duck typing (`shape`, `dtype`, `sharding`, typed PRNG keys).
ArrayLeaf = tp.Any
Leaf = tuple[KeyPath, ArrayLeaf]
# Leaves as nested dicts (`State.to_pure_dict()`'s layout), as orbax stores them.
Nested = dict[tp.Hashable, tp.Union["Nested", ArrayLeaf]]


class LeafMeta(tp.TypedDict):
    """One leaf in `nnxfn.json`."""

    path: list[str | int]
    shape: list[int]
    dtype: str


class Meta(tp.TypedDict):
    """The body of `nnxfn.json`: every leaf of every item saved."""

    format: str
    version: int
    backend: str
    items: list[list[LeafMeta]]


# -- items <-> flat leaves ------------------------------------------------------------
def state_of_item(item: object) -> State:
    return item if isinstance(item, State) else state_of(item)


def flat(state: State) -> list[Leaf]:
    return [(p, v.raw_value if isinstance(v, Variable) else v) for p, v in state.flat_state()]


def root_name(item: object) -> str:
    if isinstance(item, Module):
        return "model"
    if isinstance(item, State):
        return "state"
    return type(item).__name__.lower() if is_registered_node(item) else "target"


def check_savable(flat: list[Leaf], root: str) -> None:
    for p, x in flat:
        if isinstance(x, jax.ShapeDtypeStruct) or not hasattr(x, "dtype"):
            raise TypeError(not_concrete(path_str(p, root), x))
        for key in p:
            if not isinstance(key, (str, int)) or isinstance(key, bool):
                raise TypeError(bad_key(path_str(p, root), key))


def pure(flat: list[Leaf]) -> Nested:
    root: Nested = {}
    for p, x in flat:
        node = root
        for key in p[:-1]:
            node = node.setdefault(key, {})
        node[p[-1]] = x
    return root


def write_back(target: object, state: State, values: dict[KeyPath, ArrayLeaf]) -> object:
    new = State.from_flat_path([(p, _replace(v, values[p])) for p, v in state.flat_state()])
    if isinstance(target, State):
        return new
    if is_registered_node(target):
        update(target, new)
        return target
    return merge(graphdef_of(target), new)


def _replace(old: object, value: ArrayLeaf) -> object:
    if isinstance(old, Variable):
        return type(old).from_parts(value, old.metadata_items())
    return value


# -- metadata and matching ------------------------------------------------------------
def metadata(backend: str, flats: list[list[Leaf]]) -> Meta:
    items: list[list[LeafMeta]] = [
        [{"path": _json_path(p), "shape": list(np.shape(x)), "dtype": str(x.dtype)} for p, x in flat]
        for flat in flats
    ]
    return {"format": FORMAT, "version": 2, "backend": backend, "items": items}


def _json_path(path: KeyPath) -> list[str | int]:
    return tp.cast("list[str | int]", list(path))  # `check_savable` allowed only str and int keys


def write_metadata(directory: Path, body: Meta) -> None:
    with open(directory / META, "w") as f:
        json.dump(body, f)
        f.flush()
        os.fsync(f.fileno())


def check_match(path: Path, flat: list[Leaf], saved: list[LeafMeta], root: str) -> None:
    disk: dict[KeyPath, LeafMeta] = {tuple(leaf["path"]): leaf for leaf in saved}
    mine = dict(flat)
    missing = [p for p in mine if p not in disk]
    unexpected = [p for p in disk if p not in mine]
    wrong = []
    for p, x in flat:
        leaf = disk.get(p)
        if leaf is None:
            continue
        shape, dtype = tuple(np.shape(x)), _dtype_name(x)
        if tuple(leaf["shape"]) != shape or leaf["dtype"] != dtype:
            wrong.append(
                f"{path_str(p, root)}: checkpoint {tuple(leaf['shape'])} {leaf['dtype']}, "
                f"{root} {shape} {dtype}"
            )
    if missing or unexpected or wrong:
        raise ValueError(mismatch(path, root, missing, unexpected, wrong))


def _sharding(x: ArrayLeaf) -> jax.sharding.Sharding:
    found = getattr(x, "sharding", None) if not isinstance(x, np.ndarray) else None
    if isinstance(found, jax.sharding.NamedSharding) and isinstance(
        found.mesh, jax.sharding.AbstractMesh
    ):  # e.g. `nnx.eval_shape` under `jax.set_mesh` on an Explicit mesh
        return _concrete(found)
    if isinstance(found, jax.sharding.Sharding):
        return found
    return jax.sharding.SingleDeviceSharding(jax.devices()[0])


def _concrete(sharding: jax.sharding.NamedSharding) -> jax.sharding.NamedSharding:
    """The same sharding on the concrete mesh set with `jax.set_mesh`."""
    mesh = jax.sharding.get_mesh()
    if mesh.empty or mesh.abstract_mesh != sharding.mesh:
        raise ValueError(
            f"restore_checkpoint: a target leaf has the sharding {sharding.spec} on an "
            f"abstract mesh ({dict(sharding.mesh.shape)}), which names no devices. Restore "
            "inside `with jax.set_mesh(mesh):` with that mesh, or build the target with "
            "`nnx.get_abstract_model(lambda: Model(...), mesh)`."
        )
    return jax.sharding.NamedSharding(mesh, sharding.spec)


# -- PRNG keys: stored as their raw uint32 key data -------------------------------------
def _is_key(x: ArrayLeaf) -> bool:
    return jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _dtype_name(x: ArrayLeaf) -> str:
    """As written to `nnxfn.json`: "float32", ..., or "key<fry>" for a typed PRNG key."""
    return str(x.dtype) if _is_key(x) else str(np.dtype(x.dtype))


def _to_data(x: ArrayLeaf) -> ArrayLeaf:
    """The array stored on disk for leaf `x` (a typed key's uint32 key data)."""
    return jax.random.key_data(x) if _is_key(x) else x


def data_spec(x: ArrayLeaf) -> jax.ShapeDtypeStruct:
    """Shape and dtype of `_to_data(x)`, for a concrete or abstract leaf."""
    spec = jax.eval_shape(jax.random.key_data, x) if _is_key(x) else x
    return jax.ShapeDtypeStruct(np.shape(spec), spec.dtype, sharding=_sharding(x))


def from_data(raw: ArrayLeaf, x: ArrayLeaf) -> ArrayLeaf:
    """Inverse of `_to_data`, with the key implementation of the target leaf `x`."""
    if not _is_key(x):
        return raw
    # An abstract (ShapeDtypeStruct) key has no public accessor for its impl.
    impl = jax.random.key_impl(x) if isinstance(x, jax.Array) else x.dtype._impl
    return jax.random.wrap_key_data(raw, impl=impl)


def data_flat(flat: list[Leaf]) -> list[Leaf]:
    return [(p, _to_data(x)) for p, x in flat]


# -- the npz backend (installs without orbax) ----------------------------------------
def write_npz(tmp: Path, flats: list[list[Leaf]]) -> None:
    arrays = {
        f"{i}/{k}": np.asarray(jax.device_get(_to_data(x)))
        for i, flat in enumerate(flats)
        for k, (_, x) in enumerate(flat)
    }
    with open(tmp / "arrays.npz", "wb") as f:
        arrays_by_name = {name: _storable(a) for name, a in arrays.items()}  # every key is "i/k"
        np.savez(f, **arrays_by_name)  # type: ignore[arg-type]  # stub: `**` could fill allow_pickle
        f.flush()
        os.fsync(f.fileno())


def _storable(a: np.ndarray) -> np.ndarray:
    """Extension dtypes (bfloat16, float8, ...) are stored as raw bytes."""
    return a.reshape(-1).view(np.uint8) if a.dtype.kind == "V" else a


def read_npz(path: Path, flats: list[list[Leaf]]) -> list[dict[KeyPath, ArrayLeaf]]:
    out = []
    with np.load(path / "arrays.npz", allow_pickle=False) as data:
        saved = json.loads((path / META).read_text())["items"]
        for i, (flat, leaves) in enumerate(zip(flats, saved)):
            index = {tuple(leaf["path"]): k for k, leaf in enumerate(leaves)}
            values = {}
            for p, x in flat:
                raw = data[f"{i}/{index[p]}"]
                spec = data_spec(x)
                if raw.dtype != np.dtype(spec.dtype):
                    raw = raw.view(np.dtype(spec.dtype)).reshape(spec.shape)
                values[p] = from_data(jax.device_put(raw, spec.sharding), x)
            out.append(values)
    return out


# -- error messages ------------------------------------------------------------------------
def mismatch(
    path: Path, root: str, missing: list[KeyPath], unexpected: list[KeyPath], wrong: list[str]
) -> str:
    def show(paths: list[KeyPath]) -> str:
        text = ", ".join(path_str(p, root) for p in paths[:10])
        return text + (f", ... ({len(paths) - 10} more)" if len(paths) > 10 else "")

    lines = [f"restore_checkpoint: the checkpoint at {path} does not match the {root}."]
    if missing:
        lines.append(f"  missing from the checkpoint: {show(missing)}")
    if unexpected:
        lines.append(f"  in the checkpoint but not in the {root}: {show(unexpected)}")
    if wrong:
        lines.append("  shape/dtype mismatch:\n    " + "\n    ".join(wrong))
    prefix = _common_prefix_key(unexpected, missing)
    if prefix is not None:
        lines.append(
            f"Every path of the {root} is in the checkpoint under {prefix!r}: it holds "
            f"a larger object (e.g. an `nnx.ModelAndOptimizer`, whose {prefix!r} is "
            "this model). Restore into that object, e.g. "
            "`restore_checkpoint(path, nnx.ModelAndOptimizer(model, tx))`."
        )
    else:
        lines.append(
            "Restore into an object built with the same configuration as the saved "
            "one (e.g. `jax.eval_shape(lambda: Model(...))` with the same arguments)."
        )
    return "\n".join(lines)


def _common_prefix_key(unexpected: list[KeyPath], missing: list[KeyPath]) -> tp.Hashable | None:
    """The key `k` if the target's missing paths all appear under `k` in the checkpoint."""
    if not unexpected or not missing:
        return None
    saved = set(unexpected)
    for key in sorted({p[0] for p in unexpected if p}, key=repr):
        if all((key,) + p in saved for p in missing):
            return key
    return None


def wrong_count(path: Path, saved: int, given: int) -> str:
    return (
        f"restore_checkpoint: {path} holds {saved} item(s) but {given} target(s) were "
        "given. Pass one target per item saved, in the same order as to save_checkpoint."
    )


def not_found(path: object, step: int | None = None) -> str:
    what = f"no checkpoint of step {step}" if step is not None else "no nnxfn checkpoint"
    return (
        f"restore_checkpoint: {what} at {path} (neither a checkpoint nor a directory of "
        "step-numbered checkpoints). Check the path; checkpoints are written by "
        "`save_checkpoint(directory, model, step=...)`."
    )


def exists(path: object, step: int) -> str:
    return (
        f"save_checkpoint: {path} already holds step {step}. Pass overwrite=True to "
        "replace it, or save under another step."
    )


def not_concrete(where: str, x: object) -> str:
    return (
        f"save_checkpoint: {where} is a {type(x).__name__}, not an array with values. "
        "Save a model with real weights (an abstract model from `jax.eval_shape` "
        "has none), outside of `jax.jit`."
    )


def bad_key(where: str, key: object) -> str:
    return (
        f"save_checkpoint: {where} has the key {key!r} ({type(key).__name__}); checkpoint "
        "paths support str and int keys only. Use string dict keys."
    )


def no_orbax() -> str:
    return (
        "save_checkpoint(backend='orbax'): orbax-checkpoint is not installed. Install "
        "it with `pip install 'nnxfn[checkpoint]'`, or use backend='npz'."
    )
