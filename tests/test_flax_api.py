"""Flax NNX's public surface exists in nnxfn: every module path, every public name
there, every public attribute of Flax's classes and of the objects its functions
return, and the parameters of its functions.

`tests/data/flax_nnx_api.json` is written by `tests/data/gen_flax_api.py` from
flax 0.12.8 (see its docstring for what is recorded); when that flax is installed
here, the record is regenerated and compared, so it cannot go stale. Every
absence in nnxfn is listed below with its reason; anything else missing fails.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import json
import pathlib
import sys
import types
import warnings

import pytest

import nnxfn

DATA = pathlib.Path(__file__).parent / "data"
API = json.loads((DATA / "flax_nnx_api.json").read_text())
MODULES: dict[str, dict] = API["modules"]
CLASSES: dict[str, list[str]] = API["classes"]
OBJECTS: dict[str, dict] = API["objects"]

# Modules whose names are all API (Flax builds them from imports); in the others
# only what the module itself defines is (its imports are implementation).
NAMESPACES = {"", "compat", "nn", "training", "transforms"}

# -- what nnxfn does not have, and why ---------------------------------------------------------
LINEN = "Linen interop: nnxfn has no Linen (README: No Linen)"
TRANSFORM_MACHINERY = (
    "Flax's machinery behind its transforms (pure-arg conversion, masks, update "
    "tracking, the callables they pass to JAX); nnxfn's transforms share one boundary "
    "(transforms/boundary.py)"
)
GRAPH_MACHINERY = (
    "Flax's graph-engine internals (node implementations, registries, flat GraphDef "
    "records, its split contexts' caches); nnxfn's engine is core/"
)
TREE_MODE_TWIN = "Flax's tree-mode twin class; nnxfn has one implementation, returned in both modes"
REPR = "Flax's repr/treescope rendering machinery; nnxfn's reprs come from facade/display.py"
METACLASS = "a Flax metaclass; nnxfn's Modules, Pytrees and Variables are plain classes"
HIJAX = "Flax's hijax internals (JAX primitives, effects and avals of HijaxVariable)"
SENTINEL = "a Flax-internal sentinel or context object"
SUMMARY_TABLE = "Flax's helpers for drawing nnx.tabulate's table (nnxfn draws it in nn/summary_table.py)"
NOT_IMPLEMENTED = "raises NotImplementedError in Flax"


def _each(prefix: str, names: str, reason: str) -> dict[str, str]:
    return {prefix + n: reason for n in names.split()}


GRAPH_INTERNALS = (
    "ArrayRefDef DataElem GRAPH_CONTEXT GenericPytree GraphContext GraphNodeImpl IndexesPytreeDef "
    "LEAF_ATTR LeafAttr NODE_ATTR NodeAttr NodeImplBase PYTREE_NODE_IMPL PythonRefMap PytreeNodeImpl "
    "StaticCache StaticElem UpdateContextManager get_node_impl get_node_impl_for_type is_node_module "
    "static_cache"
)
PYTREE_REGISTRY = (
    "Flax's registry of pytree types that JAX does not know; nnxfn walks any JAX pytree: "
    "register the type with `jax.tree_util.register_pytree_with_keys`"
)

ABSENT_NAMES: dict[str, str] = {
    **_each("", "bridge wrappers", LINEN),
    **_each(
        "extract.",
        "ExtractIndex GraphDefState Mask Opaque OrderedDict Updates apply_updates broadcast_prefix2 "
        "broadcast_prefix_map check_consistent_aliasing2 check_no_aliases check_prefix "
        "check_same_variables copy_var_structure extract filter_kwargs find from_tree2 get_updates "
        "insert labeled mask_at replace_at slice_at snapshot to_masked to_tree2 treemap_copy_args "
        "update_carry_variables variable_changed",
        TRANSFORM_MACHINERY,
    ),
    **_each("graph.", GRAPH_INTERNALS, GRAPH_MACHINERY),
    **_each("graphlib.", GRAPH_INTERNALS, GRAPH_MACHINERY),
    **_each("graph.", "register_pytree_node_type", PYTREE_REGISTRY),
    **_each("graphlib.", "register_pytree_node_type", PYTREE_REGISTRY),
    **_each(
        "transforms.autodiff.",
        "BwdFn CustomVjpFnWrapper FwdFn GradFn SimpleBwdFn SimpleCustomVjpFn SimpleFwdFn "
        "SimpleGradFn SimpleJvpFn SimpleRematFn SimpleVjpFn",
        TRANSFORM_MACHINERY,
    ),
    **_each("transforms.autodiff.", "SimpleCustomVjp", TREE_MODE_TWIN),
    **_each(
        "transforms.compilation.",
        "JitFn ShardMapFn SimpleJitFn SimpleJitPartialFn SimpleShardMapFn",
        TRANSFORM_MACHINERY,
    ),
    **_each(
        "transforms.iteration.",
        "Broadcasted ForiLoopBodyFn PmapFn ScanFn SimpleForiLoopBodyFn SimplePmapFn SimpleScanFn "
        "SimpleVmapFn SimpleWhileLoopBodyFn SimpleWhileLoopCondFn VmapFn WhileLoopBodyFn "
        "WhileLoopCondFn",
        TRANSFORM_MACHINERY,
    ),
    **_each(
        "transforms.transforms.",
        "CheckifyFn LiftedModule SimpleCheckifyFn SimpleCondFn SimpleEvalShapeFn SimpleMakeJaxprFn "
        "ValueMetadata resolve_kwargs",
        TRANSFORM_MACHINERY,
    ),
    **_each("module.", "ModuleMeta", METACLASS),
    **_each("pytreelib.", "ObjectMeta PytreeMeta", METACLASS),
    **_each("variablelib.", "VariableMeta HijaxVariableMeta", METACLASS),
    **_each("pytreelib.", "ArrayRepr MutableArrayRepr VariableRepr", REPR),
    **_each(
        "reprlib.",
        "Attr COLOR Color MappingReprMixin NO_COLOR Object PrettyMapping PrettySequence REPR_CONTEXT "
        "ReprContext Representable SequenceReprMixin colorized get_repr supports_color",
        REPR,
    ),
    **_each("statelib.", "NestedStateRepr", REPR),
    **_each("visualization.", "render_object_constructor", REPR),
    **_each("pytreelib.", "AttributeStatus OBJECT_CONTEXT ObjectContext PytreeState", SENTINEL),
    **_each("variablelib.", "VARIABLE_CONTEXT VariableContext", SENTINEL),
    **_each("training.optimizer.", "MISSING", SENTINEL),
    **_each(
        "variablelib.",
        "AbstractVariable GetVariable NewVariable SetVariable VariableEffect VariableQDD "
        "get_variable_p new_variable_p set_variable_p variable_effect",
        HIJAX,
    ),
    **_each("summary.", "ArrayRepr NoneDumper ObjectInfo SimpleObjectRepr SizeBytes", SUMMARY_TABLE),
}

FLAT_GRAPHDEF = (
    "Flax's flat GraphDef encoding (attribute lists, outer indexes for its split contexts); "
    "nnxfn's GraphDef is a tree of records (core/graphdef.py)"
)
OUTER_INDEX = "with_matching_outer_index with_no_outer_index with_same_outer_index"

# Attributes: `*.name` for every class and object, else per Flax class (`path.Name`) or
# per object expression.
ABSENT_ATTRS: dict[str, str] = {
    **_each("*.", "__deepcopy__", "copy protocol: `copy.deepcopy` works through `__reduce__`/`__getstate__`"),
    **_each("*.", "__setstate__", "pickle protocol: pickling works through `__reduce__`/`__getstate__`"),
    **_each("*.", "__nnx_repr__ __treescope_repr__", REPR),
    **_each("*.", "__post_init__", "a Flax dataclass's own construction hook"),
    **_each("extract.TreeState.", "__state__", "the name of Flax's private field behind `TreeState.state`"),
    **_each("graphlib.GraphDef.", "attributes " + OUTER_INDEX, FLAT_GRAPHDEF),
    **_each("graphlib.NodeDef.", "outer_index " + OUTER_INDEX, FLAT_GRAPHDEF),
    **_each("graphlib.VariableDef.", OUTER_INDEX, FLAT_GRAPHDEF),
    **_each("graphlib.TreeNodeDef.", "path_index treedef type " + OUTER_INDEX, FLAT_GRAPHDEF),
    **_each(
        "statelib.State.",
        "clear pop popitem setdefault update",
        "a State is immutable in nnxfn (README): no in-place mutation methods",
    ),
    **_each(
        "helpers.List.", "sow perturb", "an nnx.List holds items, not attributes: use the Module holding it"
    ),
    **_each(
        "helpers.List.",
        "0",
        "Flax keeps list items as attributes named '0', '1', ...; nnxfn's List holds them in a list: `lst[0]`",
    ),
    **_each("transforms.compilation.Compiled.", "call", NOT_IMPLEMENTED),
    **_each("transforms.compilation.SimpleCompiled.", "call", NOT_IMPLEMENTED),
    **_each("transforms.compilation.SimplePartialCompiled.", "call", NOT_IMPLEMENTED),
    **_each("transforms.compilation.Lowered.", "from_flat_info", NOT_IMPLEMENTED),
    **_each("variablelib.HijaxVariable.", "cur_qdd has_qdd type_state", HIJAX),
    **_each(
        "variablelib.VariableMetadata.",
        "on_add_axis on_create_value on_get_value on_remove_axis on_set_value",
        "Flax's deprecated Variable hooks as VariableMetadata fields; subclass the Variable and "
        "override get_value/set_value/create_value/add_axis instead (Flax's advice)",
    ),
    **_each(
        "transforms.autodiff.CustomVjp.",
        "ctxtag",
        "the tag of Flax's split/merge context; nnxfn's custom_vjp has none",
    ),
    **_each(
        "nnx.shard_map(f, mesh=jax.make_mesh((1,), ('a',)), in_specs=jax.P(), out_specs=jax.P()).",
        "inner",
        "Flax's jax.shard_map of its pure arguments; nnxfn makes the jax.shard_map per argument "
        "structure (specs resolved per Variable)",
    ),
    **_each(
        "nnx.cached_partial(f, model).",
        "__get__ __name__ __qualname__ __wrapped__",
        "nnxfn's cached_partial returns a functools.partial (`.func` is the wrapped function, "
        "e.g. an nnx.jit function with `jitted_fn`), not a new function",
    ),
}


# -- helpers --------------------------------------------------------------------------------
def _ours(path: str) -> types.ModuleType:
    return nnxfn if not path else importlib.import_module(f"nnxfn.{path}")


def _required(path: str) -> list[str]:
    """The names of `flax.nnx.<path>` that nnxfn must have there."""
    out = []
    for name, info in MODULES[path].items():
        if info["kind"] in ("typevar", "typing", "protocol") or info["origin"] == "flax.typing":
            continue  # static typing only (TypeVars, aliases, Protocols, flax.typing)
        defined = info["defined"] or (path == "graph" and MODULES["graphlib"].get(name, {}).get("defined"))
        if path not in NAMESPACES and not defined:
            continue  # an implementation module's imports
        out.append(name)
    return out


def _absent(key: str, reasons: dict[str, str]) -> bool:
    return key in reasons


def _instances() -> dict[str, list]:
    """OBJECTS evaluated with `nnx` bound to nnxfn, by expression."""
    env: dict = {"nnx": nnxfn}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(API["prelude"], env)
        return {expr: eval(expr, env) for expr in OBJECTS}


# -- module paths and names -------------------------------------------------------------------
@pytest.mark.parametrize("path", sorted(p for p in MODULES if p))
def test_every_flax_module_path_imports(path):
    module = importlib.import_module(f"nnxfn.{path}")
    parent, _, name = f"nnxfn.{path}".rpartition(".")
    assert getattr(sys.modules[parent], name) is module  # also an attribute of its package
    assert sys.modules[f"nnxfn.{path}"] is module


@pytest.mark.parametrize("path", sorted(MODULES))
def test_every_flax_name_exists(path):
    module = _ours(path)
    missing = [
        n
        for n in _required(path)
        if not hasattr(module, n) and not _absent(f"{path}.{n}" if path else n, ABSENT_NAMES)
    ]
    assert missing == [], f"nnxfn.{path or '<top>'} lacks {missing}"


def test_absences_are_still_absent():
    """A listed absence that nnxfn now provides must leave the list."""
    provided = []
    for key in ABSENT_NAMES:
        path, _, name = key.rpartition(".")
        try:
            if hasattr(_ours(path), name):
                provided.append(key)
        except ModuleNotFoundError:
            pass
        assert name in MODULES.get(path, {}), f"{key} is not a Flax name"
    assert provided == []


@pytest.mark.parametrize("path", sorted(MODULES))
def test_names_are_nnxfn_objects(path):
    """Each name is nnxfn's own implementation, never Flax's object."""
    module = _ours(path)
    borrowed = []
    for n in _required(path):
        obj = getattr(module, n, None)
        target = getattr(obj, "func", obj)  # functools.partial
        origin = (
            target.__name__ if isinstance(target, types.ModuleType) else getattr(target, "__module__", "")
        )
        if isinstance(origin, str) and origin.split(".")[0] == "flax":
            borrowed.append(n)
    assert borrowed == []


@pytest.mark.skipif(importlib.util.find_spec("flax") is None, reason="flax not installed")
def test_record_matches_installed_flax():
    import flax

    if getattr(flax, "__version__", "") != "0.12.8":
        pytest.skip("the record is of flax 0.12.8")
    spec = importlib.util.spec_from_file_location("gen_flax_api", DATA / "gen_flax_api.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert gen.collect() == API


# -- attributes of classes and objects ------------------------------------------------------
def _has(obj: object, attr: str, instances: list) -> bool:
    if hasattr(obj, attr):
        return True
    if inspect.isclass(obj):
        if dataclasses.is_dataclass(obj) and attr in {f.name for f in dataclasses.fields(obj)}:
            return True
        # set in __init__: look at nnxfn instances of the class made from OBJECTS
        return any(type(i) is obj and hasattr(i, attr) for i in instances)
    return False


def _missing(key: str, obj: object, attrs: list[str], instances: list) -> list[str]:
    return [
        a
        for a in attrs
        if not _has(obj, a, instances)
        and not _absent(f"*.{a}", ABSENT_ATTRS)
        and not _absent(f"{key}.{a}", ABSENT_ATTRS)
    ]


@pytest.fixture(scope="module")
def instances():
    return _instances()


@pytest.mark.parametrize("key", sorted(CLASSES))
def test_class_attributes(key, instances):
    path, _, name = key.rpartition(".")
    ours = getattr(_ours(path), name, None)
    if ours is None:
        assert _absent(key, ABSENT_NAMES) or name not in _required(path)
        return
    missing = _missing(key, ours, CLASSES[key], list(instances.values()))
    assert missing == [], f"nnxfn.{key} lacks {missing}"


@pytest.mark.parametrize("expr", sorted(OBJECTS))
def test_object_attributes(expr, instances):
    obj = instances[expr]
    key = OBJECTS[expr]["type"]
    missing = [
        a
        for a in _missing(key or expr, obj, OBJECTS[expr]["attrs"], [])
        if not _absent(f"{expr}.{a}", ABSENT_ATTRS)
    ]
    assert missing == [], f"{expr} lacks {missing}"


def test_attribute_absences_are_flax_attributes():
    recorded = {f"{k}.{a}" for k, attrs in CLASSES.items() for a in attrs}
    recorded |= {f"{v['type']}.{a}" for v in OBJECTS.values() if v["type"] for a in v["attrs"]}
    recorded |= {f"{e}.{a}" for e, v in OBJECTS.items() for a in v["attrs"]}
    every = {a for attrs in CLASSES.values() for a in attrs}
    unknown = [k for k in ABSENT_ATTRS if not (k in recorded or (k[:2] == "*." and k[2:] in every))]
    assert unknown == []


# -- function signatures ----------------------------------------------------------------------
def _accepted(fn):
    sig = inspect.signature(fn)
    kinds = {p.kind for p in sig.parameters.values()}
    return (
        set(sig.parameters),
        inspect.Parameter.VAR_KEYWORD in kinds,
        inspect.Parameter.VAR_POSITIONAL in kinds,
    )


FUNCTIONS = sorted(
    (path, name)
    for path in MODULES
    for name in _required(path)
    if MODULES[path][name]["params"] and not _absent(f"{path}.{name}" if path else name, ABSENT_NAMES)
)


@pytest.mark.parametrize(("path", "name"), FUNCTIONS, ids=[f"{p}.{n}" if p else n for p, n in FUNCTIONS])
def test_functions_accept_flax_parameters(path, name):
    ours = getattr(_ours(path), name)
    if isinstance(ours, types.ModuleType):
        pytest.fail(f"nnxfn.{path}.{name} is a module; flax's is a function")
    try:
        names, var_kw, var_pos = _accepted(ours)
    except (TypeError, ValueError):
        pytest.skip("no introspectable signature")
    n_positional = sum(
        p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        for p in inspect.signature(ours).parameters.values()
    )
    flax_positional = 0
    for pname, kind in MODULES[path][name]["params"]:
        if kind == "VAR_KEYWORD":
            continue
        if kind == "POSITIONAL_ONLY":  # only the count matters
            flax_positional += 1
            assert flax_positional <= n_positional or var_pos, (
                f"nnxfn.{name} takes fewer positional arguments"
            )
            continue
        if kind == "VAR_POSITIONAL":
            assert var_pos, f"nnxfn.{name} does not take *{pname}"
            continue
        assert pname in names or var_kw, f"nnxfn.{name} does not accept {pname}="
