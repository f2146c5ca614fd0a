"""Write `flax_nnx_api.json`: the public surface of the installed flax.nnx (0.12.8).

Run with the real flax importable: `python tests/data/gen_flax_api.py`. It records

- `modules`: every module path under `flax.nnx` (recursively, `bridge` aside: Linen
  interop), "" being `flax.nnx` itself, with each public name there: its kind
  (module, class, protocol, function, typevar, typing, value), where it comes from (origin:
  `flax.nnx`, `flax.typing`, `flax` for the rest of flax, or `external`) and, for
  functions, the parameter names and kinds, and whether the module defines it
  (`defined`) or imports it. Not recorded: imported library modules (`jax`, `np`,
  `tp`, ...), sibling modules a module imports (`graphlib` inside `statelib`;
  children such as `nn.linear` are recorded) and objects of Python's standard
  library imported by name (`partial`, `dataclass`, `typing.Any`): they are
  implementation details.
- `classes`: for each public class defined in flax.nnx, where it is (`path.Name`)
  and its public attributes (`dir(cls)`, plus the protocol dunders it adds).
- `objects`: for each expression in `OBJECTS` (instances and the wrappers that
  transforms return), the public attributes of the object it evaluates to, with
  `nnx` bound to flax.nnx. tests/test_flax_api.py evaluates the same expressions with
  `nnx` bound to nnxfn and compares.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import pathlib
import pkgutil
import sys
import types
import typing
import warnings

# Evaluated before the expressions of OBJECTS (with `nnx` bound to the library).
PRELUDE = """
import jax
import jax.numpy as jnp
import optax

f = lambda x: x
x = jnp.ones((2, 2))
rngs = nnx.Rngs(0)
model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
"""

OBJECTS = [
    # nnx.jit and its stages
    "nnx.jit(f)",
    "nnx.jit(f).lower(x)",
    "nnx.jit(f).lower(x).compile()",
    "nnx.jit(f).trace(x)",
    "nnx.jit_partial(lambda m, x: m(x), model, graph_updates=False)",
    # the wrappers of the other transforms
    "nnx.grad(f)",
    "nnx.value_and_grad(f)",
    "nnx.vmap(f)",
    "nnx.pmap(f)",
    "nnx.scan(lambda c, x: (c, x))",
    "nnx.remat(f)",
    "nnx.checkify(f)",
    "nnx.custom_vjp(f)",
    "nnx.shard_map(f, mesh=jax.make_mesh((1,), ('a',)), in_specs=jax.P(), out_specs=jax.P())",
    "nnx.cached_partial(f, model)",
    "nnx.split_rngs(splits=2)",
    "nnx.fork_rngs(rngs)",
    # graph and state values
    "nnx.split(model)[0]",
    "nnx.split(model)[1]",
    "nnx.split(model)[1].flat_state()",
    "nnx.to_tree(model)",
    "nnx.StateAxes({nnx.Param: 0, ...: None})",
    "nnx.StateSharding({nnx.Param: None, ...: None})",
    "nnx.DiffState(0, nnx.Param)",
    # random streams
    "rngs",
    "rngs.default",
    "rngs.default.key",
    "rngs.default.count",
    # Variables
    "nnx.Variable(jnp.ones(2))",
    "nnx.Param(jnp.ones(2))",
    "nnx.BatchStat(jnp.ones(2))",
    "nnx.Cache(jnp.ones(2))",
    "nnx.Intermediate(jnp.ones(2))",
    "nnx.LoRAParam(jnp.ones(2))",
    # training
    "nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)",
    "nnx.ModelAndOptimizer(model, optax.sgd(0.1))",
    "nnx.EMA(model, 0.9)",
    "nnx.metrics.Average()",
    "nnx.metrics.Accuracy()",
    "nnx.metrics.Welford()",
    "nnx.MultiMetric(loss=nnx.metrics.Average())",
    # modules and containers
    "nnx.Module()",
    "type('P', (nnx.Pytree,), {})()",
    "nnx.Sequential(model)",
    "nnx.List([model])",
    "nnx.Dict(a=model)",
    "model",
    "nnx.LinearGeneral(2, 3, rngs=rngs)",
    "nnx.Einsum('ab,bc->ac', (2, 3), rngs=rngs)",
    "nnx.Embed(3, 2, rngs=rngs)",
    "nnx.Conv(2, 3, (3,), rngs=rngs)",
    "nnx.ConvTranspose(2, 3, (3,), rngs=rngs)",
    "nnx.PReLU()",
    "nnx.BatchNorm(2, rngs=rngs)",
    "nnx.LayerNorm(2, rngs=rngs)",
    "nnx.RMSNorm(2, rngs=rngs)",
    "nnx.GroupNorm(4, num_groups=2, rngs=rngs)",
    "nnx.InstanceNorm(2, rngs=rngs)",
    "nnx.SpectralNorm(nnx.Linear(2, 2, rngs=rngs), rngs=rngs)",
    "nnx.WeightNorm(nnx.Linear(2, 2, rngs=rngs), rngs=rngs)",
    "nnx.Dropout(0.5, rngs=rngs)",
    "nnx.MultiHeadAttention(2, 4, rngs=rngs)",
    "nnx.LoRA(2, 1, 2, rngs=rngs)",
    "nnx.LoRALinear(2, 2, lora_rank=1, rngs=rngs)",
    "nnx.LSTMCell(2, 3, rngs=rngs)",
    "nnx.OptimizedLSTMCell(2, 3, rngs=rngs)",
    "nnx.GRUCell(2, 3, rngs=rngs)",
    "nnx.SimpleCell(2, 3, rngs=rngs)",
    "nnx.RNN(nnx.SimpleCell(2, 3, rngs=rngs))",
    "nnx.Bidirectional(nnx.RNN(nnx.SimpleCell(2, 3, rngs=rngs)), nnx.RNN(nnx.SimpleCell(2, 3, rngs=rngs)))",
]

# Dunders that are bookkeeping, not behaviour: never recorded.
_BOOKKEEPING = {
    "__abstractmethods__",
    "__annotations__",
    "__class_getitem__",
    "__dataclass_fields__",
    "__dataclass_params__",
    "__dict__",
    "__match_args__",
    "__module__",
    "__orig_bases__",
    "__parameters__",
    "__slots__",
    "__weakref__",
    "__firstlineno__",
    "__static_attributes__",
    "__protocol_attrs__",
    "__non_callable_proto_members__",
    "_is_protocol",
    "__dataclass_transform__",
    # a plain function's internals (wrappers made by other means lack them)
    "__builtins__",
    "__closure__",
    "__code__",
    "__defaults__",
    "__globals__",
    "__kwdefaults__",
}


def _stdlib_ids() -> set[int]:
    """ids of the classes and functions that standard-library modules define."""
    ids = set()
    for name, mod in list(sys.modules.items()):
        if name.split(".")[0] not in sys.stdlib_module_names or mod is None:
            continue
        for value in vars(mod).values():
            if inspect.isclass(value) or callable(value) or _is_typing(value):
                ids.add(id(value))
    return ids


def _is_typing(obj: object) -> bool:
    return (
        isinstance(obj, (typing.TypeVar, typing.ParamSpec, types.UnionType, types.GenericAlias))
        or type(obj).__module__ == "typing"
    )


def _kind(obj: object) -> str:
    if isinstance(obj, types.ModuleType):
        return "module"
    if isinstance(obj, (typing.TypeVar, typing.ParamSpec)):
        return "typevar"
    if inspect.isclass(obj) and getattr(obj, "_is_protocol", False):
        return "protocol"  # a typing.Protocol: a static type, never instantiated
    if inspect.isclass(obj):
        return "class"
    if _is_typing(obj):
        return "typing"
    if callable(obj):
        return "function"
    return "value"


def _origin(obj: object, flax_typing: types.ModuleType) -> str:
    if any(obj is v for v in vars(flax_typing).values()) and _kind(obj) != "value":
        return "flax.typing"
    target = obj.func if isinstance(obj, functools.partial) else obj
    module = target.__name__ if isinstance(target, types.ModuleType) else getattr(target, "__module__", None)
    if not isinstance(module, str) or not (
        inspect.isclass(target)
        or inspect.isfunction(target)
        or isinstance(target, types.ModuleType)
        or isinstance(target, typing.TypeVar)
    ):
        module = type(target).__module__ if _kind(target) != "value" else None
    if module is None:
        return "external"
    if module == "flax.nnx" or module.startswith("flax.nnx."):
        return "flax.nnx"
    if module.split(".")[0] == "flax":
        return "flax"
    return "external"


def _defined_in(obj: object, modname: str) -> bool:
    """True if `obj` is made in module `modname` (not imported from elsewhere);
    a module is "made" in its parent package."""
    if isinstance(obj, types.ModuleType):
        return obj.__name__.rpartition(".")[0] == modname
    target = obj.func if isinstance(obj, functools.partial) else obj
    if inspect.isclass(target) or inspect.isfunction(target) or isinstance(target, typing.TypeVar):
        return target.__module__ == modname
    return type(target).__module__ == modname


def _params(obj: object) -> list | None:
    if not callable(obj) or inspect.isclass(obj):
        return None
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    return [[p.name, p.kind.name] for p in sig.parameters.values()]


def _public(names: typing.Iterable[str]) -> list[str]:
    """Public names, and the dunders a class adds to `object`'s (`__call__`, `__getitem__`, ...)."""
    base = set(dir(object)) | _BOOKKEEPING
    return sorted(
        n
        for n in names
        if not n.startswith("_") or (n.startswith("__") and n.endswith("__") and n not in base)
    )


def modules(nnx: types.ModuleType) -> dict[str, str]:
    """'' and every dotted path under flax.nnx, to its module name."""
    found = {"": "flax.nnx"}
    for info in pkgutil.walk_packages(nnx.__path__, "flax.nnx."):
        path = info.name[len("flax.nnx.") :]
        if path.split(".")[0] != "bridge":
            found[path] = info.name
    return found


def type_key(cls: type) -> str | None:
    """`path.Name` of a class defined in flax.nnx (its key in `classes`), else None."""
    module = cls.__module__
    if module != "flax.nnx" and not module.startswith("flax.nnx."):
        return None
    path = module[len("flax.nnx.") :] if module != "flax.nnx" else ""
    return f"{path}.{cls.__qualname__}" if path else cls.__qualname__


def collect() -> dict:
    """The record of the installed flax.nnx (what `main` writes)."""
    import flax
    import flax.nnx as nnx
    import flax.typing as flax_typing

    paths = modules(nnx)
    for name in paths.values():
        importlib.import_module(name)
    stdlib = _stdlib_ids()
    out_modules: dict[str, dict] = {}
    classes: dict[str, list[str]] = {}
    for path, modname in sorted(paths.items()):
        mod = sys.modules[modname]
        names = {}
        for n in sorted(dir(mod)):
            if n.startswith("_"):
                continue
            obj = getattr(mod, n)
            kind = _kind(obj)
            if kind == "module" and not obj.__name__.startswith("flax.nnx"):
                continue  # `jax`, `np`, `tp`, `struct`, ...: imported libraries
            if kind == "module" and path and obj.__name__ != f"{modname}.{n}":
                continue  # `graphlib` inside `flax.nnx.statelib`: an import, not a child
            if kind != "value" and id(obj) in stdlib:
                continue  # `partial`, `dataclass`, `typing.Any`, ...
            origin = _origin(obj, flax_typing)
            names[n] = {
                "kind": kind,
                "origin": origin,
                "defined": _defined_in(obj, modname),
                "params": _params(obj),
            }
            if (
                kind == "class"
                and origin == "flax.nnx"
                and obj.__module__ == modname
                and obj.__name__ == n
                and ".bridge" not in modname
            ):
                classes[f"{path}.{n}" if path else n] = _public(dir(obj))
        out_modules[path] = names
    objects = {}
    env: dict = {"nnx": nnx}
    exec(PRELUDE, env)
    for expr in OBJECTS:
        obj = eval(expr, env)
        objects[expr] = {"type": type_key(type(obj)), "attrs": _public(dir(obj))}
    return {
        "flax": flax.__version__,
        "prelude": PRELUDE,
        "modules": out_modules,
        "classes": classes,
        "objects": objects,
    }


def main() -> None:
    warnings.simplefilter("ignore")
    import flax

    assert flax.__version__ == "0.12.8", flax.__version__
    data = collect()
    target = pathlib.Path(__file__).with_name("flax_nnx_api.json")
    target.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    counts = ", ".join(f"{len(data[k])} {k}" for k in ("modules", "classes", "objects"))
    print(f"wrote {target}: {counts}")


if __name__ == "__main__":
    main()
