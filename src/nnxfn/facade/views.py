"""Copies of an object graph that share its Variables, and `nnx.capture`.

- `view` / `with_attributes`: the same Variables under modules with some
  attributes changed (`deterministic=True`, ...); the original is unchanged.
- `view_info`: what `view` accepts, read from the modules' `set_view` methods.
- `with_vars`: the same graph with some Variables converted (`hijax=`, `ref=`).
- `set_metadata`: metadata written on every (matching) Variable, in place.
- `capture`: run a function and return what `Module.sow`/`Module.perturb`
  recorded, via temporary `__captures__` buffers on every module.
"""

from __future__ import annotations

import functools
import inspect
import typing as tp

from nnxfn import core
from nnxfn.core import treemode
from nnxfn.facade.module import Module, iter_modules
from nnxfn.facade.variables import Variable

A = tp.TypeVar("A")
_NO_GRAPH = object()


def _shared_copy(node: A) -> A:
    """A new graph of nodes and containers holding `node`'s own Variables."""
    graphdef, pairs = core.flatten_graph(node, copy=False)
    return core.unflatten_graph(graphdef, dict(pairs), copy=False)


def view(
    node: A,
    /,
    *,
    only: tp.Any = ...,
    raise_if_not_found: bool = True,
    graph: bool | None = None,
    **kwargs: object,
) -> A:
    """A copy of the graph sharing every Variable with `node`, with modules
    switched by `kwargs` (`nnx.view(model, deterministic=True)`).

    A module with a `set_view(**kwargs)` method decides itself what its
    keywords do; on other modules (matching `only`) attributes of those names
    are set. Calling the view updates the same parameters and statistics.
    """
    del graph  # nnxfn has one graph behaviour
    predicate = core.to_predicate(only)
    remaining = set(kwargs)
    out = _shared_copy(node)
    for path, module in iter_modules(out):
        if not predicate(path, module):
            continue
        set_view = getattr(module, "set_view", None)
        if set_view is not None:
            params = inspect.signature(set_view).parameters.values()
            if any(p.kind is p.VAR_KEYWORD for p in params):
                set_view(**kwargs)
                remaining.clear()
            else:
                names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
                set_view(**{k: v for k, v in kwargs.items() if k in names})
                remaining -= names
        else:
            for name, value in kwargs.items():
                if hasattr(module, name):
                    setattr(module, name, value)
                    remaining.discard(name)
    if raise_if_not_found and remaining:
        raise ValueError(
            f"Unused keys found in nnx.view: {sorted(remaining)}. No module in the "
            "graph takes them; check the names, or pass raise_if_not_found=False."
        )
    return out


def with_attributes(
    node: A,
    /,
    *,
    only: tp.Any = ...,
    raise_if_not_found: bool = True,
    graph: bool | None = None,
    **attributes: object,
) -> A:
    """A copy of the graph sharing every Variable with `node`, with `attributes`
    set on the modules (matching `only`) that have them; `node` is unchanged."""
    del graph
    predicate = core.to_predicate(only)
    remaining = set(attributes)
    out = _shared_copy(node)
    for path, module in iter_modules(out):
        if predicate(path, module):
            for name, value in attributes.items():
                if hasattr(module, name):
                    setattr(module, name, value)
                    remaining.discard(name)
    if remaining and raise_if_not_found:
        raise ValueError(missing_attributes(remaining))
    return out


def missing_attributes(names: tp.Iterable[str]) -> str:
    return (
        "Could not find at least one instance of the following attributes: "
        f"{sorted(names)}. Check the names, or pass raise_if_not_found=False."
    )


def view_info(node: object, /, *, only: object = ..., graph: bool | None = None) -> str:
    """What `nnx.view` accepts for `node`: each module class with a `set_view`
    method, its keywords (with defaults) and their docstring descriptions."""
    del graph
    predicate = core.to_predicate(only)
    classes = {type(m) for path, m in iter_modules(node) if hasattr(m, "set_view") and predicate(path, m)}
    lines: list[str] = []
    for cls in sorted(classes, key=lambda c: c.__qualname__):
        lines.append(f"{cls.__qualname__}:")
        sig = inspect.signature(cls.set_view)
        doc = inspect.getdoc(cls.set_view)
        if not isinstance(doc, str):
            lines.append(f"  set_view{sig}")
            continue
        described = _doc_args(doc)
        for name, param in sig.parameters.items():
            if name in ("self", "args", "kwargs"):
                continue
            head = f"  {name}: {_annotation(param.annotation)}"
            if param.default is not inspect.Parameter.empty:
                head += f" = {param.default}"
            lines.append(head)
            if name in described:
                lines.append(described[name])
    return "\n".join(lines)


def _annotation(ann: object) -> str:
    return ann if isinstance(ann, str) else inspect.formatannotation(ann)


def _doc_args(doc: str) -> dict[str, str]:
    """name -> description lines (indented by 4) of a Google-style `Args:` section."""
    start = doc.find("Args:\n")
    if start == -1:
        return {}
    end = doc.find("Returns:\n", start)
    section = doc[start + 6 : end if end != -1 else len(doc)]
    out: dict[str, list[str]] = {}
    current = None
    for line in section.split("\n"):
        if line.startswith("  ") and not line.startswith("    ") and ":" in line:
            name, _, rest = line.strip().partition(":")
            current = name.strip()
            out[current] = ["    " + rest.strip()]
        elif current is not None and line.strip():
            out[current].append(line)
    return {k: "\n".join(v) for k, v in out.items()}


# -- Variables -------------------------------------------------------------------------
def with_vars(
    node: A,
    /,
    *,
    hijax: bool | None = None,
    ref: bool | None = None,
    mutable: bool | None = None,
    only: tp.Any = ...,
    allow_duplicates: bool = False,
) -> A:
    """The graph with the Variables (matching `only`) converted to `hijax=`/`ref=`
    mode; other Variables are shared with `node`, nodes are new objects.
    `nnx.with_vars(model, hijax=False)` gives plain Variables back."""
    del mutable  # accepted for Flax code; nnxfn Variables are always mutable
    changes = {k: v for k, v in (("hijax", hijax), ("ref", ref)) if v is not None}
    predicate = core.to_predicate(only)

    def differs(path: tuple, x: object) -> bool:
        return (
            isinstance(x, Variable)
            and predicate(path, x)
            and any(getattr(x, k) != v for k, v in changes.items())
        )

    if isinstance(node, Variable):
        return tp.cast("A", node.copy(**changes)) if differs((), node) else node
    if not allow_duplicates:
        dups = [paths for paths in core.find_duplicates(node) if differs(paths[0], _at(node, paths[0]))]
        if dups:
            listed = "\n".join("  " + ", ".join("/".join(map(str, p)) for p in group) for group in dups)
            raise ValueError(
                f"Found duplicate at paths:\n{listed}\nA Variable reachable by several paths "
                "would be converted into several copies; pass allow_duplicates=True to accept that."
            )
    _, pairs = core.flatten_graph(node, copy=False)
    swap = {id(v): v.copy(**changes) for path, v in pairs if differs(path, v)}
    return _replace(_shared_copy(node), swap, set())


def _replace(value: tp.Any, swap: dict[int, tp.Any], done: set[int]) -> tp.Any:
    """`value` with the Variables in `swap` (by id) replaced: graph nodes are
    updated in place (they are fresh copies), plain containers rebuilt."""
    if id(value) in swap:
        return swap[id(value)]
    impl = core.registry.lookup(type(value))
    if impl is not None:
        if id(value) not in done:
            done.add(id(value))
            for key, child in list(impl.children(value)):
                new = _replace(child, swap, done)
                if new is not child:
                    impl.set_child(value, key, new)
        return value
    if type(value) in (list, tuple):
        items = [_replace(v, swap, done) for v in value]
        if any(a is not b for a, b in zip(items, value)):
            return type(value)(items)
    elif type(value) is dict:
        entries = {k: _replace(v, swap, done) for k, v in value.items()}
        if any(entries[k] is not value[k] for k in value):
            return entries
    else:  # a State or another pytree holding Variables
        import jax

        def is_var(x: object) -> bool:
            return isinstance(x, Variable)

        if any(id(x) in swap for x in jax.tree.leaves(value, is_leaf=is_var)):
            return jax.tree.map(lambda x: swap.get(id(x), x), value, is_leaf=is_var)
    return value


def _at(node: object, path: tuple) -> tp.Any:
    for key in path:
        node = dict(core.graph.children_of(node))[key]
    return node


vars_as = with_vars


def set_metadata(node: object, /, *, only: object = Variable, **metadata: object) -> None:
    """Set `metadata` on every Variable of `node` matching `only`, in place."""
    predicate = core.to_predicate(only)
    for path, value in core.iter_graph(node):
        if isinstance(value, Variable) and predicate(path, value):
            value.set_metadata(**metadata)


def iter_children(node: object, /, *, graph: bool | None = None) -> tp.Iterator[tuple[tp.Any, tp.Any]]:
    """(key, child) for the direct children of `node` that are graph nodes
    (Modules, Rngs, `nnx.List`, ...) or Variables; does not recurse."""
    if treemode.is_tree_mode(graph) and getattr(type(node), "_nnx_is_pytree", True) is False:
        raise ValueError(treemode.not_a_pytree("iter_children", node, None))
    if core.registry.lookup(type(node)) is None:
        raise ValueError(f"Expected a graph node, got {type(node).__name__}.")
    for key, value in core.graph.children_of(node):
        if core.registry.lookup(type(value)) is not None or isinstance(value, Variable):
            yield key, value


def iter_module_children(node: object, /, *, graph: bool | None = None) -> tp.Iterator[tuple[tp.Any, tp.Any]]:
    """(key, module) for the direct children of `node` that are Modules."""
    for key, value in iter_children(node, graph=graph):
        if isinstance(value, Module):
            yield key, value


# -- capture -------------------------------------------------------------------------------
def capture(
    fn: tp.Callable[..., tp.Any], *var_types: type, init: object = None, method_outputs: type | None = None
) -> tp.Callable:
    """Wrap `fn` so it returns `(result, *states)`: what `Module.sow`/`Module.perturb`
    recorded during the call, one State per Variable type in `var_types`.

    `fn` may be a Module (its `__call__`), a bound method, or a function whose
    first argument is the module. During the call every module has a
    `__captures__` tuple of buffers (one Variable of a dict per type); `init`
    (a State, e.g. of `Perturbation`s) pre-fills them. With `method_outputs=T`,
    every method's output is sown as type `T` under the method's name.
    `nnx.capture(nnx.Intermediate)(fn)` also works.
    """
    if isinstance(fn, type) and issubclass(fn, Variable):
        types = (fn, *var_types)
        return lambda actual: capture(actual, *types, init=init, method_outputs=method_outputs)
    owner = fn if isinstance(fn, Module) else getattr(fn, "__self__", None)

    @functools.wraps(fn if not isinstance(fn, Module) else type(fn).__call__)
    def wrapper(*args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        module = owner if isinstance(owner, Module) else args[0]
        by_path = _by_module_path(init) if init is not None else {}
        modules = list(iter_modules(module))
        for path, m in modules:
            buffers: dict[type, dict] = {t: {} for t in var_types}
            for name, var in by_path.get(path, {}).items():
                buffers.setdefault(type(var), {})[name] = var.get_value()
            m.__captures__ = tuple(t(values) for t, values in buffers.items())
        patched = _patch_methods({type(m) for _, m in modules}, method_outputs)
        try:
            result = fn(*args, **kwargs)
        finally:
            _unpatch_methods(patched)
            found = _harvest(module, set(var_types))
        if not var_types:
            return result
        states = core.split_state(found, *(_exact_first(t, var_types) for t in var_types))
        return (result, states) if len(var_types) == 1 else (result, *states)

    return wrapper


def _exact_first(var_type: type, all_types: tuple) -> tp.Callable:
    """A filter for `var_type` that leaves instances of other listed subtypes to them
    (`capture(f, nnx.Intermediate, nnx.Perturbation)` splits the two)."""

    def pred(path: tuple, value: object) -> bool:
        kind = type(value)
        return kind is var_type or (isinstance(value, var_type) and kind not in all_types)

    return pred


def _by_module_path(state: object) -> dict[tuple, dict[str, Variable]]:
    out: dict[tuple, dict[str, Variable]] = {}

    def walk(s: tp.Any, path: tuple) -> None:
        for key, value in s.items():
            if isinstance(value, Variable):
                out.setdefault(path, {})[key] = value
            elif isinstance(value, tp.Mapping):
                walk(value, path + (key,))

    walk(state, ())
    return out


def _harvest(module: Module, var_types: set) -> tp.Any:
    """The recorded values as a State by module path; removes every `__captures__`."""
    flat: dict[tuple, tp.Any] = {}
    for path, m in list(iter_modules(module)):
        buffers = m.__dict__.get("__captures__")
        if buffers is None:
            continue
        for var in buffers:
            if type(var) in var_types:
                for key, value in var.get_value().items():
                    flat[path + (key,)] = type(var)(value)
        delattr(m, "__captures__")
    return core.State.from_flat_path(flat)


def _patch_methods(classes: set, var_type: type | None) -> list[tuple[type, str, object]]:
    """Wrap the public methods (and `__call__`) each class defines so their
    outputs are sown as `var_type`; returns what to restore."""
    if var_type is None:
        return []
    patched = []
    for cls in classes:
        for name, method in list(vars(cls).items()):
            if not callable(method) or isinstance(method, type):
                continue
            if name.startswith("_") and name != "__call__":
                continue
            patched.append((cls, name, method))
            setattr(cls, name, _sowing(method, name, var_type))
    return patched


def _sowing(method: tp.Callable, name: str, var_type: type) -> tp.Callable:
    @functools.wraps(method)
    def wrapper(self: tp.Any, *args: object, **kwargs: object) -> tp.Any:
        result = method(self, *args, **kwargs)
        self.sow(var_type, name, result)
        return result

    return wrapper


def _unpatch_methods(patched: list[tuple[type, str, object]]) -> None:
    for cls, name, method in reversed(patched):
        setattr(cls, name, method)
