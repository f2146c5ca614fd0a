"""Saving and restoring the state of models, optimizers and other graph nodes.

Usage::

    save_checkpoint("/ckpt/step_100", model)
    abstract = jax.eval_shape(lambda: Model(rngs=nnx.Rngs(0)))   # no weights made
    model = restore_checkpoint("/ckpt/step_100", abstract)        # filled in place

On-disk contract. A checkpoint is a directory holding

- `nnxfn.json`: `{"format": "nnxfn-checkpoint", "version": 1, "backend": ...,
  "items": [[{"path": [...], "shape": [...], "dtype": "float32"}, ...], ...]}`,
  one list of leaves per saved item, paths as JSON lists of str/int keys;
- with the `"orbax"` backend, `state/`: an orbax `StandardCheckpointer`
  checkpoint of `nnx.state(node).to_pure_dict()` (string/int-keyed nested
  dicts of arrays, e.g. `{'layers': {0: {'kernel': ...}}}`); several items
  are saved as `{'0': item0, '1': item1, ...}`;
- with the `"npz"` backend (used when orbax-checkpoint is not installed),
  `arrays.npz`: leaf `k` of item `i` (in `nnxfn.json` order) as `"{i}/{k}"`.

Variable types and metadata are not stored: they come from the restore
target, whose structure the checkpoint must match exactly (one error lists
missing, unexpected and shape/dtype-mismatched paths). Arrays are read
directly with the target's shape, dtype and sharding, so restoring into an
abstract model (ShapeDtypeStruct leaves) creates each weight once.

Saving is atomic: everything is written to a temporary directory next to
`path`, which replaces `path` only once complete, so an interrupted save
leaves the previous checkpoint loadable.
"""

from __future__ import annotations

import json
import os
import shutil
import typing as tp
import uuid
from pathlib import Path

import jax
import numpy as np

from nnxfn.core import State, graphdef as graphdef_of, merge, state as state_of, update
from nnxfn.core.errors import path_str
from nnxfn.core.registry import is_graph_node
from nnxfn.facade.module import Module
from nnxfn.facade.variables import Variable

_META = "nnxfn.json"
_FORMAT = "nnxfn-checkpoint"
Backend = tp.Literal["auto", "orbax", "npz"]
Leaf = tuple[tuple[tp.Any, ...], tp.Any]


def save_checkpoint(
    path: str | os.PathLike, *items: tp.Any, overwrite: bool = True, backend: Backend = "auto"
) -> Path:
    """Save the state of each item (graph node, State, pytree) to directory `path`.

    Replaces an existing checkpoint at `path` atomically (or raises
    FileExistsError with `overwrite=False`). Returns the absolute path.
    """
    if not items:
        raise TypeError("save_checkpoint(path, *items): give at least one model/optimizer/State.")
    path = Path(path).absolute()
    if path.exists() and not overwrite:
        raise FileExistsError(_exists(path))
    backend = _choose_backend(backend)
    flats = [_flat(_as_state(item)) for item in items]
    for i, flat in enumerate(flats):
        _check_savable(flat, _root_name(items[i]))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex}"
    try:
        tmp.mkdir()
        if any(flats):
            _WRITERS[backend](tmp, flats)
        _write_metadata(tmp, backend, flats)
        _swap_into_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def restore_checkpoint(path: str | os.PathLike, *targets: tp.Any) -> tp.Any:
    """Restore into each target (a model/optimizer, possibly abstract, or a State).

    Graph nodes are updated in place and returned; a State or plain pytree
    target gives a new one. With several targets, returns a tuple.
    """
    if not targets:
        raise TypeError("restore_checkpoint(path, *targets): give the model(s) to restore into.")
    path = _existing(Path(path).absolute())
    meta = json.loads((path / _META).read_text())
    saved = meta["items"]
    if len(saved) != len(targets):
        raise ValueError(_wrong_count(path, len(saved), len(targets)))
    states = [_as_state(t) for t in targets]
    flats = [_flat(s) for s in states]
    for target, flat, leaves in zip(targets, flats, saved):
        _check_match(path, flat, leaves, _root_name(target))
    arrays = _READERS[meta["backend"]](path, flats) if any(flats) else [{} for _ in flats]
    out = [_write_back(t, s, a) for t, s, a in zip(targets, states, arrays)]
    return out[0] if len(out) == 1 else tuple(out)


# -- items <-> flat leaves ------------------------------------------------------------
def _as_state(item: tp.Any) -> State:
    return item if isinstance(item, State) else state_of(item)


def _flat(state: State) -> list[Leaf]:
    return [(p, v.raw_value if isinstance(v, Variable) else v) for p, v in state.flat_state()]


def _root_name(item: tp.Any) -> str:
    if isinstance(item, Module):
        return "model"
    if isinstance(item, State):
        return "state"
    return type(item).__name__.lower() if is_graph_node(item) else "target"


def _check_savable(flat: list[Leaf], root: str) -> None:
    for p, x in flat:
        if isinstance(x, jax.ShapeDtypeStruct) or not hasattr(x, "dtype"):
            raise TypeError(_not_concrete(path_str(p, root), x))
        for key in p:
            if not isinstance(key, (str, int)) or isinstance(key, bool):
                raise TypeError(_bad_key(path_str(p, root), key))


def _pure(flat: list[Leaf]) -> dict:
    root: dict = {}
    for p, x in flat:
        node = root
        for key in p[:-1]:
            node = node.setdefault(key, {})
        node[p[-1]] = x
    return root


def _write_back(target: tp.Any, state: State, values: dict) -> tp.Any:
    new = State.from_flat_path(
        [(p, _replace(v, values[p])) for p, v in state.flat_state()]
    )
    if isinstance(target, State):
        return new
    if is_graph_node(target):
        update(target, new)
        return target
    return merge(graphdef_of(target), new)


def _replace(old: tp.Any, value: tp.Any) -> tp.Any:
    if isinstance(old, Variable):
        return type(old).from_parts(value, old.metadata_items())
    return value


# -- metadata and matching ------------------------------------------------------------
def _write_metadata(tmp: Path, backend: str, flats: list[list[Leaf]]) -> None:
    items = [
        [{"path": list(p), "shape": list(np.shape(x)), "dtype": str(x.dtype)} for p, x in flat]
        for flat in flats
    ]
    body = {"format": _FORMAT, "version": 1, "backend": backend, "items": items}
    with open(tmp / _META, "w") as f:
        json.dump(body, f)
        f.flush()
        os.fsync(f.fileno())


def _check_match(path: Path, flat: list[Leaf], saved: list[dict], root: str) -> None:
    disk = {tuple(leaf["path"]): leaf for leaf in saved}
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
        raise ValueError(_mismatch(path, root, missing, unexpected, wrong))


def _sharding(x: tp.Any) -> jax.sharding.Sharding:
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
def _is_key(x: tp.Any) -> bool:
    return jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _dtype_name(x: tp.Any) -> str:
    """As written to `nnxfn.json`: "float32", ..., or "key<fry>" for a typed PRNG key."""
    return str(x.dtype) if _is_key(x) else str(np.dtype(x.dtype))


def _to_data(x: tp.Any) -> tp.Any:
    """The array stored on disk for leaf `x` (a typed key's uint32 key data)."""
    return jax.random.key_data(x) if _is_key(x) else x


def _data_spec(x: tp.Any) -> jax.ShapeDtypeStruct:
    """Shape and dtype of `_to_data(x)`, for a concrete or abstract leaf."""
    spec = jax.eval_shape(jax.random.key_data, x) if _is_key(x) else x
    return jax.ShapeDtypeStruct(np.shape(spec), spec.dtype, sharding=_sharding(x))


def _from_data(raw: tp.Any, x: tp.Any) -> tp.Any:
    """Inverse of `_to_data`, with the key implementation of the target leaf `x`."""
    if not _is_key(x):
        return raw
    # An abstract (ShapeDtypeStruct) key has no public accessor for its impl.
    impl = jax.random.key_impl(x) if isinstance(x, jax.Array) else x.dtype._impl
    return jax.random.wrap_key_data(raw, impl=impl)


def _data_flat(flat: list[Leaf]) -> list[Leaf]:
    return [(p, _to_data(x)) for p, x in flat]


# -- backends ------------------------------------------------------------------------------
def _choose_backend(backend: str) -> str:
    if backend == "npz":
        return backend
    try:
        import orbax.checkpoint  # noqa: F401
    except ImportError:
        if backend == "orbax":
            raise ImportError(_no_orbax()) from None
        return "npz"
    if backend not in ("auto", "orbax"):
        raise ValueError(f"save_checkpoint: backend={backend!r}; use 'auto', 'orbax' or 'npz'.")
    return "orbax"


def _orbax_tree(trees: list[dict]) -> dict:
    return trees[0] if len(trees) == 1 else {str(i): t for i, t in enumerate(trees)}


def _write_orbax(tmp: Path, flats: list[list[Leaf]]) -> None:
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(tmp / "state", _orbax_tree([_pure(_data_flat(f)) for f in flats]))
        ckptr.wait_until_finished()


def _read_orbax(path: Path, flats: list[list[Leaf]]) -> list[dict]:
    import orbax.checkpoint as ocp

    abstract = [
        _pure([(p, _data_spec(x)) for p, x in f])
        for f in flats
    ]
    with ocp.StandardCheckpointer() as ckptr:
        tree = ckptr.restore(path / "state", _orbax_tree(abstract))
    trees = [tree] if len(flats) == 1 else [tree[str(i)] for i in range(len(flats))]
    raws = [dict(State(t).flat_state()) if t else {} for t in trees]
    return [{p: _from_data(raw[p], x) for p, x in f} for raw, f in zip(raws, flats)]


def _write_npz(tmp: Path, flats: list[list[Leaf]]) -> None:
    arrays = {
        f"{i}/{k}": np.asarray(jax.device_get(_to_data(x))) for i, flat in enumerate(flats)
        for k, (_, x) in enumerate(flat)
    }
    with open(tmp / "arrays.npz", "wb") as f:
        np.savez(f, **{name: _storable(a) for name, a in arrays.items()})
        f.flush()
        os.fsync(f.fileno())


def _storable(a: np.ndarray) -> np.ndarray:
    """Extension dtypes (bfloat16, float8, ...) are stored as raw bytes."""
    return a.reshape(-1).view(np.uint8) if a.dtype.kind == "V" else a


def _read_npz(path: Path, flats: list[list[Leaf]]) -> list[dict]:
    out = []
    with np.load(path / "arrays.npz", allow_pickle=False) as data:
        saved = json.loads((path / _META).read_text())["items"]
        for i, (flat, leaves) in enumerate(zip(flats, saved)):
            index = {tuple(leaf["path"]): k for k, leaf in enumerate(leaves)}
            values = {}
            for p, x in flat:
                raw = data[f"{i}/{index[p]}"]
                spec = _data_spec(x)
                if raw.dtype != np.dtype(spec.dtype):
                    raw = raw.view(np.dtype(spec.dtype)).reshape(spec.shape)
                values[p] = _from_data(jax.device_put(raw, spec.sharding), x)
            out.append(values)
    return out


_WRITERS = {"orbax": _write_orbax, "npz": _write_npz}
_READERS = {"orbax": _read_orbax, "npz": _read_npz}


# -- atomic replacement --------------------------------------------------------------------
def _swap_into_place(tmp: Path, path: Path) -> None:
    if path.exists():  # a non-empty directory cannot be replaced by one rename
        os.replace(path, path.parent / f".{path.name}.old-{uuid.uuid4().hex}")
    os.replace(tmp, path)
    for stale in path.parent.glob(f".{path.name}.old-*"):  # incl. those of dead saves
        shutil.rmtree(stale, ignore_errors=True)


def _existing(path: Path) -> Path:
    """`path`, or the previous checkpoint if a save died between its two renames."""
    if (path / _META).is_file():
        return path
    backups = sorted(path.parent.glob(f".{path.name}.old-*"), key=lambda p: p.stat().st_mtime)
    for backup in reversed(backups):
        if (backup / _META).is_file():
            return backup
    raise FileNotFoundError(_not_found(path))


# -- error messages ------------------------------------------------------------------------
def _mismatch(path: Path, root: str, missing: list, unexpected: list, wrong: list[str]) -> str:
    def show(paths: list) -> str:
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


def _common_prefix_key(unexpected: list, missing: list) -> tp.Any:
    """The key `k` if the target's missing paths all appear under `k` in the checkpoint."""
    if not unexpected or not missing:
        return None
    saved = set(unexpected)
    for key in sorted({p[0] for p in unexpected if p}, key=repr):
        if all((key,) + p in saved for p in missing):
            return key
    return None


def _wrong_count(path: Path, saved: int, given: int) -> str:
    return (
        f"restore_checkpoint: {path} holds {saved} item(s) but {given} target(s) were "
        "given. Pass one target per item saved, in the same order as to save_checkpoint."
    )


def _not_found(path: Path) -> str:
    return (
        f"restore_checkpoint: no nnxfn checkpoint at {path} (no {_META} inside). "
        "Check the path; checkpoints are written by `save_checkpoint(path, model)`."
    )


def _exists(path: Path) -> str:
    return (
        f"save_checkpoint: {path} exists. Pass overwrite=True to replace it "
        "(atomically), or choose another path."
    )


def _not_concrete(where: str, x: tp.Any) -> str:
    return (
        f"save_checkpoint: {where} is a {type(x).__name__}, not an array with values. "
        "Save a model with real weights (an abstract model from `jax.eval_shape` "
        "has none), outside of `jax.jit`."
    )


def _bad_key(where: str, key: tp.Any) -> str:
    return (
        f"save_checkpoint: {where} has the key {key!r} ({type(key).__name__}); checkpoint "
        "paths support str and int keys only. Use string dict keys."
    )


def _no_orbax() -> str:
    return (
        "save_checkpoint(backend='orbax'): orbax-checkpoint is not installed. Install "
        "it with `pip install 'nnxfn[checkpoint]'`, or use backend='npz'."
    )
