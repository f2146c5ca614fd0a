"""Retrace explanations for `nnx.jit`, in the model's own terms.

When a jitted function is traced again (JAX found no compiled version for
the new inputs), a `RetraceWarning` names every input that differs from the
previous trace of the same function, by argument name and path:

    nnx.jit(train_step) traced again (trace 2) because:
      model.l1.kernel: float32[3,8] -> float32[3,16]
      model.dropout.rate: static 0.1 -> static 0.2
      x: float32[] (Python scalar) -> float32[]

It covers Variable and array shapes and dtypes, Python scalars that became
arrays, static attributes and static arguments, Variable types and added or
removed attributes. The check runs only while JAX traces (a cached call never
reaches it), so it is on by default; `nnx.set_retrace_warnings(False)` (or
the environment variable `NNXFN_RETRACE_WARNINGS=0`) turns it off.
"""

from __future__ import annotations

import inspect
import os
import sys
import types
import typing as tp
import warnings
import weakref

import jax

if tp.TYPE_CHECKING:
    from nnxfn.transforms.boundary import EntryStatic

#: name -> (value description, kind) of everything that keys one trace
Signature = dict[str, tuple[str, str]]

_ENABLED = [os.environ.get("NNXFN_RETRACE_WARNINGS", "1") not in ("0", "false", "False", "")]
_LAST: weakref.WeakKeyDictionary[object, tuple[int, Signature]] = weakref.WeakKeyDictionary()
# jitted -> (trace count, signature of its latest trace): what the next warning compares
# against (a diagnostic record, not a cache: it saves no work, so NNXFN_CACHE leaves it)


class TraceInputs(tp.Protocol):
    """What keys one trace of an `nnx.jit` body (jit's `CallStatic` is one)."""

    @property
    def entry(self) -> EntryStatic: ...

    @property
    def static_args(self) -> tuple[tuple[int, tp.Any], ...]: ...

    @property
    def static_kwargs(self) -> tuple[tuple[str, tp.Any], ...]: ...


class RetraceWarning(UserWarning):
    """An `nnx.jit` function was traced again; the message says which inputs changed."""


def set_retrace_warnings(enabled: bool) -> None:
    """Turn `nnx.jit`'s retrace explanations on (the default) or off."""
    _ENABLED[0] = bool(enabled)


def retrace_warnings_enabled() -> bool:
    return _ENABLED[0]


# -- describing one trace's inputs ----------------------------------------------------------------
def _aval(x: object) -> str:
    if x is None:
        return "None"
    aval = getattr(x, "aval", None)
    shape, dtype = getattr(aval or x, "shape", None), getattr(aval or x, "dtype", None)
    if shape is None or dtype is None:
        return f"static {x!r}"
    text = f"{getattr(dtype, 'name', dtype)}[{','.join(str(d) for d in shape)}]"
    if getattr(aval, "weak_type", False):  # a Python number, or an array made from one
        text += " (Python scalar)" if not shape else " (weakly typed)"
    return text


def _key_text(key: tp.Any) -> str:
    if isinstance(key, int):
        return f"[{key}]"
    if isinstance(key, str) and key.isidentifier():
        return f".{key}"
    return f"[{key!r}]"


def _jax_key(key: tp.Any) -> tp.Any:
    for attr in ("idx", "key", "name"):
        if hasattr(key, attr):
            return getattr(key, attr)
    return str(key)


def _jax_key_text(key: tp.Any) -> str:
    if isinstance(key, jax.tree_util.DictKey):
        return f"[{key.key!r}]"
    return _key_text(_jax_key(key))


def _arg_names(fn: tp.Callable, treedef: tp.Any, statics: tuple) -> list[str]:
    """A readable name (`model`, `batch['x']`, `args[2]`) for each leaf of (args, kwargs)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        params = []
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    star = next((p.name for p in params if p.kind is p.VAR_POSITIONAL), "args")
    static_positions = {i for i, _ in statics}

    def original(j: int) -> int:  # the j-th argument that is not static
        i = -1
        while j >= 0:
            i += 1
            if i not in static_positions:
                j -= 1
        return i

    n = treedef.num_leaves
    tree = jax.tree_util.tree_unflatten(treedef, list(range(n)))
    names = [f"input {i}" for i in range(n)]
    for keypath, i in jax.tree_util.tree_flatten_with_path(tree)[0]:
        keys = [_jax_key(k) for k in keypath]
        if len(keys) < 2:
            continue
        if keys[0] == 0:
            j = original(keys[1])
            head = positional[j] if j < len(positional) else f"{star}[{j - len(positional)}]"
        else:
            head = str(keys[1])
        names[i] = head + "".join(_jax_key_text(k) for k in keypath[2:])
    return names


def _structure(defn: tp.Any, prefix: str, out: dict[str, tuple[str, str]]) -> None:
    """Static parts of a GraphDef record tree: node types, static values, Variable types."""
    kind = type(defn).__name__
    if kind == "NodeDef":
        out.setdefault(prefix, ("", defn.type.__name__))
        statics = defn.static if isinstance(defn.static, tuple) else ()
        for item in statics:  # attributes marked static (e.g. an optimizer's `tx`)
            if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
                out[prefix + _key_text(item[0])] = (f"static {item[1]!r}", "")
    elif kind == "StaticDef":
        out[prefix] = (f"static {defn.value!r}", "")
    elif kind == "VariableDef":
        out[prefix] = ("", defn.type.__name__ + (f" {dict(defn.metadata)}" if defn.metadata else ""))
    elif kind == "Ref":
        out[prefix] = ("", "a shared reference")
    for key, child in getattr(defn, "children", ()) or ():
        _structure(child, prefix + _key_text(key), out)


def signature(
    fn: tp.Callable[..., tp.Any],
    static: TraceInputs,
    values: tp.Sequence[tp.Any],
    others: tp.Sequence[tp.Any],
) -> Signature:
    """name -> (value description, kind) for everything that keys a trace."""
    entry, statics, static_kw = static.entry, static.static_args, static.static_kwargs
    names = _arg_names(fn, entry.treedef, statics)
    node_names = [names[i] for i in entry.node_positions]
    out: dict[str, tuple[str, str]] = {}
    try:
        for key, child in entry.graphdef.root.children:
            _structure(child, node_names[key], out)
    except Exception:  # noqa: BLE001 - an unknown GraphDef layout: compare it whole below
        out = {}
    out["<structure>"] = ("", str(hash(entry.graphdef)))
    for path, value in zip(entry.paths, values):
        name = node_names[path[0]] + "".join(_key_text(k) for k in path[1:])
        out[name] = (_aval(value), out.get(name, ("", ""))[1])
    taken = set(entry.node_positions) | {i for i, _ in entry.static_leaves}
    other_positions = [i for i in range(entry.treedef.num_leaves) if i not in taken]
    for i, value in zip(other_positions, others):
        out[names[i]] = (_aval(value), "")
    for i, value in entry.static_leaves:
        out[names[i]] = (f"static {value!r}", "")
    positional = _arg_names_positional(fn)
    for i, value in statics:
        name = positional[i] if i < len(positional) else f"args[{i}]"
        out[name] = (f"static {value!r}", "")
    for k, value in static_kw:
        out[k] = (f"static {value!r}", "")
    return out


def _arg_names_positional(fn: tp.Callable) -> list[str]:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _short(text: str, limit: int = 70) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _described(entry: tuple[str, str] | None) -> str:
    return "(absent)" if entry is None else entry[0] or entry[1]


def differences(before: Signature, after: Signature) -> list[str]:
    """`name: old -> new` lines, in the order of the new trace's inputs."""
    lines = []
    for name in [*after, *(n for n in before if n not in after)]:
        if name == "<structure>":
            continue
        old, new = before.get(name), after.get(name)
        if old == new:
            continue
        if old is None or new is None:
            lines.append(f"{name}: {_described(old)} -> {_described(new)}")
        elif old[0] != new[0]:
            a, b = _short(old[0]), _short(new[0])
            if a == b:
                b += " (another object with the same start)"
            lines.append(f"{name}: {a} -> {b}")
        else:
            lines.append(f"{name}: {old[1]} -> {new[1]}")
    if not lines and before.get("<structure>") != after.get("<structure>"):
        lines.append("the arguments' graph structure (static attributes or sharing) changed")
    return lines


def _stacklevel() -> int:
    """The first frame outside nnxfn and JAX: the user's call."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frame: types.FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None:
        name = os.path.abspath(frame.f_code.co_filename)
        if not (
            name.startswith(package)
            or f"{os.sep}jax{os.sep}" in name
            or f"{os.sep}jaxlib{os.sep}" in name
            or name.startswith("<")
        ):
            break
        frame, level = frame.f_back, level + 1
    return level


def observe(
    jitted: object,
    fn: tp.Callable[..., tp.Any],
    static: TraceInputs,
    values: tp.Sequence[tp.Any],
    others: tp.Sequence[tp.Any],
) -> None:
    """Called by `nnx.jit` each time JAX traces its body: warn with the differences."""
    if not _ENABLED[0]:
        return
    try:
        sig = signature(fn, static, values, others)
    except Exception:  # noqa: BLE001 - explanations must never break a trace
        return
    count, previous = _LAST.get(jitted, (0, None))
    _LAST[jitted] = (count + 1, sig)
    if previous is None:
        return
    lines = differences(previous, sig)
    if not lines:
        return
    name = getattr(fn, "__qualname__", getattr(fn, "__name__", repr(fn)))
    message = (
        f"nnx.jit({name}) traced again (trace {count + 1}) because:\n  "
        + "\n  ".join(lines)
        + "\nEach new trace compiles again. Keep these inputs fixed between calls "
        "(pad batches, mark changing Python values static_argnums), or silence this "
        "with nnx.set_retrace_warnings(False)."
    )
    warnings.warn(message, RetraceWarning, stacklevel=_stacklevel())
