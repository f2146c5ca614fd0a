"""Saving and restoring models, optimizers and other graph nodes, step by step.

Usage::

    save_checkpoint("/ckpt", model, optimizer, step=100, max_to_keep=3)
    abstract = nnx.eval_shape(lambda: Model(rngs=nnx.Rngs(0)))   # no weights made
    model = restore_checkpoint("/ckpt", abstract)                 # the latest step

    # or with your own orbax manager (async saves, any retention policy):
    manager = ocp.CheckpointManager("/ckpt", options=ocp.CheckpointManagerOptions(max_to_keep=3))
    save_checkpoint(manager, model, optimizer, step=epoch)       # returns while writing
    restore_checkpoint(manager, model, optimizer)                # waits, then the latest

Both functions are thin helpers over orbax's `CheckpointManager`, which owns
the directory layout (`/ckpt/<step>/`), atomic commits, retention
(`max_to_keep`), asynchronous writes and multi-host coordination: every
process of a multi-host run calls `save_checkpoint` and each writes its own
shards. A step directory holds two orbax items: `state`, the arrays as
`nnx.state(item).to_pure_dict()` (several items as `{'0': ..., '1': ...}`),
and `nnxfn`, JSON listing every leaf's path, shape and dtype, so a restore
names each missing, unexpected or mismatched path before reading anything.
Variable types and metadata come from the restore target; arrays are read
with the target's shape, dtype and sharding (an abstract target creates each
weight once).

Without orbax-checkpoint installed, the same layout is written by a small
single-host fallback: `<step>/nnxfn.json` + `<step>/arrays.npz`, committed by
an atomic rename, with `max_to_keep` applied after each save.
"""

from __future__ import annotations

import json
import os
import shutil
import typing as tp
import uuid
from pathlib import Path

from nnxfn.training import checkpoint_format as fmt

if tp.TYPE_CHECKING:
    from typing_extensions import TypeIs

Backend = tp.Literal["auto", "orbax", "npz"]
Written = tp.Literal["orbax", "npz"]


class CheckpointManager(tp.Protocol):
    """What these helpers use of an `orbax.checkpoint.CheckpointManager`."""

    @property
    def directory(self) -> os.PathLike[str]: ...

    def all_steps(self) -> tp.Sequence[int]: ...

    def save(self, step: int, *, args: object, force: bool = ...) -> bool: ...

    def restore(self, step: int, *, args: object) -> tp.Mapping[str, tp.Any]: ...  # the items read

    def delete(self, step: int) -> None: ...

    def wait_until_finished(self) -> None: ...

    def close(self) -> None: ...


Directory = tp.Union[str, os.PathLike[str], CheckpointManager]


def save_checkpoint(
    directory: Directory,
    *items: object,
    step: int | None = None,
    max_to_keep: int | None = None,
    overwrite: bool = True,
    backend: Backend = "auto",
) -> Path:
    """Save the state of each item (graph node, State, pytree) as checkpoint `step`.

    `directory` is a path or an `orbax.checkpoint.CheckpointManager`. `step`
    defaults to one past the latest saved step (0 for the first). With a path,
    the save is finished when this returns and only the newest `max_to_keep`
    steps are kept (all if None); with a manager, its options apply and the
    write may still run in the background. An existing `step` is replaced
    (or FileExistsError with `overwrite=False`). Returns the step's directory.
    """
    if not items:
        raise TypeError("save_checkpoint(directory, *items): give at least one model/optimizer/State.")
    written: Written = "orbax" if _is_manager(directory) else _choose_backend(backend)
    flats = [fmt.flat(fmt.state_of_item(item)) for item in items]
    for i, flat in enumerate(flats):
        fmt.check_savable(flat, fmt.root_name(items[i]))
    meta = fmt.metadata(written, flats)
    if _is_manager(directory):
        manager, own = directory, False
    else:
        path = Path(directory).absolute()
        if written == "npz":
            return _save_npz(path, flats, meta, step, max_to_keep, overwrite)
        manager, own = _manager(path, max_to_keep, create=True), True
    try:
        steps = set(manager.all_steps())
        step = _next_step(steps) if step is None else int(step)
        if step in steps:
            if not overwrite:
                raise FileExistsError(fmt.exists(manager.directory, step))
            manager.wait_until_finished()
            manager.delete(step)
        manager.save(step, args=_save_args(flats, meta), force=own)
        if own:
            manager.wait_until_finished()
    finally:
        if own:
            manager.close()
    return Path(str(manager.directory)).absolute() / str(step)


def restore_checkpoint(directory: Directory, *targets: object, step: int | None = None) -> tp.Any:
    """Restore checkpoint `step` (default: the latest) into each target.

    `directory` is what `save_checkpoint` was given (a path or an orbax
    `CheckpointManager`), or one step's directory (what it returned). Targets
    are models/optimizers (possibly abstract) or States: graph nodes are
    updated in place and returned; a State or plain pytree target gives a new
    one. With several targets, returns a tuple.
    """
    if not targets:
        raise TypeError("restore_checkpoint(directory, *targets): give the model(s) to restore into.")
    if _is_manager(directory):
        directory.wait_until_finished()
        return _restore_orbax(
            directory, _pick_step(directory.all_steps(), step, directory.directory), targets
        )
    path = Path(directory).absolute()
    if (path / fmt.META).is_file():  # one npz step (or a version-1 checkpoint)
        return _restore_file_layout(path, targets)
    if (path / "nnxfn").is_dir() and path.name.isdigit():  # one orbax step
        manager = _manager(path.parent, None, create=False)
        try:
            return _restore_orbax(manager, int(path.name), targets)
        finally:
            manager.close()
    steps = _step_dirs(path)
    chosen = _pick_step(list(steps), step, path)
    if steps[chosen] == "npz":
        return _restore_file_layout(path / str(chosen), targets)
    manager = _manager(path, None, create=False)
    try:
        return _restore_orbax(manager, chosen, targets)
    finally:
        manager.close()


def checkpoint_steps(directory: Directory) -> list[int]:
    """The committed steps in `directory` (a path or an orbax `CheckpointManager`), sorted."""
    if _is_manager(directory):
        return sorted(directory.all_steps())
    return sorted(_step_dirs(Path(directory).absolute()))


# -- orbax ------------------------------------------------------------------------------------
def _is_manager(x: object) -> TypeIs[CheckpointManager]:
    return hasattr(x, "all_steps") and hasattr(x, "save") and hasattr(x, "restore")


def _manager(path: Path, max_to_keep: int | None, create: bool) -> CheckpointManager:
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create)
    return ocp.CheckpointManager(path, options=options)


def _save_args(flats: list[list[fmt.Leaf]], meta: fmt.Meta) -> object:
    import orbax.checkpoint as ocp

    items = {"nnxfn": ocp.args.JsonSave(meta)}
    if any(flats):
        tree = _orbax_tree([fmt.pure(fmt.data_flat(f)) for f in flats])
        items["state"] = ocp.args.StandardSave(tree)
    return ocp.args.Composite(**items)


def _orbax_tree(trees: list[fmt.Nested]) -> fmt.Nested:
    return trees[0] if len(trees) == 1 else {str(i): t for i, t in enumerate(trees)}


def _restore_orbax(manager: CheckpointManager, step: int, targets: tuple[object, ...]) -> object:
    import orbax.checkpoint as ocp

    where = Path(str(manager.directory)) / str(step)
    meta = manager.restore(step, args=ocp.args.Composite(nnxfn=ocp.args.JsonRestore()))["nnxfn"]
    states, flats = _check(where, meta, targets)
    arrays: list[dict[fmt.KeyPath, fmt.ArrayLeaf]] = [{} for _ in flats]
    if any(flats):
        abstract = _orbax_tree([fmt.pure([(p, fmt.data_spec(x)) for p, x in f]) for f in flats])
        tree = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))[
            "state"
        ]
        trees = [tree] if len(flats) == 1 else [tree[str(i)] for i in range(len(flats))]
        raws = [dict(fmt.State(t).flat_state()) if t else {} for t in trees]
        arrays = [{p: fmt.from_data(raw[p], x) for p, x in f} for raw, f in zip(raws, flats)]
    return _finish(targets, states, arrays)


def _check(
    where: Path, meta: fmt.Meta, targets: tuple[object, ...]
) -> tuple[list[fmt.State], list[list[fmt.Leaf]]]:
    saved = meta["items"]
    if len(saved) != len(targets):
        raise ValueError(fmt.wrong_count(where, len(saved), len(targets)))
    states = [fmt.state_of_item(t) for t in targets]
    flats = [fmt.flat(s) for s in states]
    for target, flat, leaves in zip(targets, flats, saved):
        fmt.check_match(where, flat, leaves, fmt.root_name(target))
    return states, flats


def _finish(
    targets: tuple[object, ...], states: list[fmt.State], arrays: list[dict[fmt.KeyPath, fmt.ArrayLeaf]]
) -> object:
    out = [fmt.write_back(t, s, a) for t, s, a in zip(targets, states, arrays)]
    return out[0] if len(out) == 1 else tuple(out)


# -- steps ------------------------------------------------------------------------------------
def _next_step(steps: tp.Iterable[int]) -> int:
    steps = list(steps)
    return max(steps) + 1 if steps else 0


def _step_dirs(path: Path) -> dict[int, str]:
    """Committed step directories under `path`: step -> "orbax" or "npz"."""
    found: dict[int, str] = {}
    if not path.is_dir():
        return found
    for child in path.iterdir():
        if not child.name.isdigit() or not child.is_dir():
            continue
        if (child / fmt.META).is_file():
            found[int(child.name)] = "npz"
        elif (child / "nnxfn").is_dir():
            found[int(child.name)] = "orbax"
    return found


def _pick_step(steps: tp.Sequence[int], step: int | None, where: object) -> int:
    if step is None:
        if not steps:
            raise FileNotFoundError(fmt.not_found(where))
        return max(steps)
    if int(step) not in steps:
        raise FileNotFoundError(fmt.not_found(where, step))
    return int(step)


def _choose_backend(backend: str) -> Written:
    if backend == "npz":
        return "npz"
    try:
        import orbax.checkpoint  # noqa: F401
    except ImportError:
        if backend == "orbax":
            raise ImportError(fmt.no_orbax()) from None
        return "npz"
    if backend not in ("auto", "orbax"):
        raise ValueError(f"save_checkpoint: backend={backend!r}; use 'auto', 'orbax' or 'npz'.")
    return "orbax"


# -- the npz fallback (single host, no orbax) ------------------------------------------------
def _save_npz(
    root: Path,
    flats: list[list[fmt.Leaf]],
    meta: fmt.Meta,
    step: int | None,
    max_to_keep: int | None,
    overwrite: bool,
) -> Path:
    steps = _step_dirs(root)
    step = _next_step(steps) if step is None else int(step)
    path = root / str(step)
    if step in steps and not overwrite:
        raise FileExistsError(fmt.exists(root, step))
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{step}.tmp-{uuid.uuid4().hex}"
    try:
        tmp.mkdir()
        if any(flats):
            fmt.write_npz(tmp, flats)
        fmt.write_metadata(tmp, meta)
        _swap_into_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if max_to_keep is not None:
        for old in sorted(_step_dirs(root))[:-max_to_keep]:
            shutil.rmtree(root / str(old), ignore_errors=True)
    return path


def _swap_into_place(tmp: Path, path: Path) -> None:
    if path.exists():  # a non-empty directory cannot be replaced by one rename
        os.replace(path, path.parent / f".{path.name}.old-{uuid.uuid4().hex}")
    os.replace(tmp, path)
    for stale in path.parent.glob(f".{path.name}.old-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _restore_file_layout(path: Path, targets: tuple[object, ...]) -> object:
    """One step written by the npz fallback, or a version-1 checkpoint (npz or orbax)."""
    meta = json.loads((path / fmt.META).read_text())
    states, flats = _check(path, meta, targets)
    if not any(flats):
        return _finish(targets, states, [{} for _ in flats])
    if meta["backend"] == "npz":
        return _finish(targets, states, fmt.read_npz(path, flats))
    import orbax.checkpoint as ocp  # version 1 with orbax: `state/` by StandardCheckpointer

    abstract = _orbax_tree([fmt.pure([(p, fmt.data_spec(x)) for p, x in f]) for f in flats])
    with ocp.StandardCheckpointer() as ckptr:
        tree = ckptr.restore(path / "state", abstract)
    trees = [tree] if len(flats) == 1 else [tree[str(i)] for i in range(len(flats))]
    raws = [dict(fmt.State(t).flat_state()) if t else {} for t in trees]
    return _finish(
        targets, states, [{p: fmt.from_data(raw[p], x) for p, x in f} for raw, f in zip(raws, flats)]
    )
