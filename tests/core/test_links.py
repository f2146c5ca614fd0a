"""GraphDef links: non-owning references kept only within one flatten (NodeImpl.links)."""

from __future__ import annotations

import pickle

import jax.numpy as jnp

from nnxfn import core
from nnxfn.facade.module import Module
from nnxfn.facade.variables import Param


class Target(Module):
    def __init__(self, value: float):
        self.w = Param(jnp.full(2, value))


class Holder(Module):
    """Owns `count`; refers to `target` without owning it."""

    def __init__(self, target: Target):
        self.count = Param(jnp.zeros(()))
        object.__setattr__(self, "_nnx_model", target)  # a private name: not a child


def _links(node: Holder):
    ref = node.__dict__.get("_nnx_model")
    return () if ref is None else (("ref", ref),)


def _set_link(node: Holder, key: str, target: object) -> None:
    object.__setattr__(node, "_nnx_model", target)


core.register_node_type(
    core.NodeImpl(
        **{
            **{
                f: getattr(core.registry.lookup(Module), f)
                for f in ("children", "create_empty", "set_child", "del_child", "static", "parts", "fill")
            },
            "type": Holder,
            "links": _links,
            "set_link": _set_link,
        }
    )
)


def test_link_kept_when_target_is_in_the_same_flatten():
    t = Target(1.0)
    h = Holder(t)
    roots = {
        "target first": ((t, h), lambda r: (r[0], r[1])),
        "holder first": ((h, t), lambda r: (r[1], r[0])),
        "nested": ([h, {"x": t}], lambda r: (r[1]["x"], r[0])),
    }
    for name, (root, pick) in roots.items():
        graphdef, state = core.split(root)
        assert graphdef.links, name
        new_t, new_h = pick(core.merge(graphdef, state))
        assert new_h._nnx_model is new_t and new_t is not t, name
        graphdef, pairs = core.flatten_graph(root)  # the general (path-based) implementation
        new_t, new_h = pick(core.unflatten_graph(graphdef, dict(pairs)))
        assert new_h._nnx_model is new_t, name
    assert set(core.state(h).to_pure_dict()) == {"count"}  # no leaves of the target
    t2, h2 = core.clone((t, h))
    assert h2._nnx_model is t2 and t2 is not t


def test_link_dropped_when_target_is_outside():
    t = Target(1.0)
    h = Holder(t)
    graphdef, state = core.split(h)
    assert graphdef.links == ()
    alone = core.merge(graphdef, state)
    assert alone.__dict__.get("_nnx_model") is None


def test_links_are_part_of_graphdef_equality_and_pickle():
    t = Target(1.0)
    same = core.graphdef((t, Holder(t)))
    other_t = Target(2.0)
    linked = core.graphdef((other_t, Holder(other_t)))
    unlinked = core.graphdef((Target(2.0), Holder(Target(3.0))))
    assert same == linked and hash(same) == hash(linked)
    assert same != unlinked
    restored = pickle.loads(pickle.dumps(same))
    assert restored == same and restored.links == same.links
