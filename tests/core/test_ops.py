"""The op records of a GraphDef (core/ops.py) and the verbs that run them (core/program.py)."""

import jax.numpy as jnp
import numpy as np
import pytest

import nnxfn as nnx
from nnxfn.core import program
from nnxfn.core.ops import (
    ARRAY_OP,
    MUTABLE_REF_OP,
    ContainerOp,
    LeafNodesOp,
    NodeOp,
    SameRefOp,
    SharedOp,
    StaticOp,
    VariableOp,
    op_equal,
    op_hash,
    plan_ops,
)
from nnxfn.core.state import split_leaves
from nnxfn.core.walker import walk_graph


class Layer(nnx.Module):
    def __init__(self, scale):
        self.w = nnx.Param(jnp.full((2,), scale))
        self.scale = 3


class Net(nnx.Module):
    def __init__(self, n):
        self.layers = nnx.List([Layer(float(i)) for i in range(n)])
        self.head = Layer(10.0)
        self.tied = self.head.w


def test_walk_writes_one_typed_op_per_value_in_pre_order():
    net = Net(1)
    ops = walk_graph(net, copy=False).graphdef.ops
    kinds = [type(op) for op in ops]
    # Net, head (Layer: scale, w), layers (List: Layer: scale, w), tied (a second path to head.w)
    assert kinds[0] is NodeOp and ops[0].node_type is Net and ops[0].keys == ("head", "layers", "tied")
    assert kinds[1] is NodeOp and ops[1].node_type is Layer and ops[1].keys == ("scale", "w")
    assert ops[2] == StaticOp(3) and type(ops[3]) is VariableOp and ops[3].variable_type is nnx.Param
    assert ops[-1] == SharedOp(2)  # head is object 1, head.w object 2
    assert type(ops[-1]) is SharedOp


def test_op_equal_tells_kinds_apart_where_tuple_equality_does_not():
    assert ARRAY_OP == MUTABLE_REF_OP  # equal as tuples (both empty) ...
    assert not op_equal(ARRAY_OP, MUTABLE_REF_OP)  # ... but not the same op
    assert SharedOp(1) == StaticOp(1) and not op_equal(SharedOp(1), StaticOp(1))
    assert not op_equal(SameRefOp(0), StaticOp(0))
    assert op_hash(SharedOp(1)) != op_hash(StaticOp(1))
    assert not op_equal(StaticOp(1), StaticOp(True)) and not op_equal(StaticOp(1), StaticOp(1.0))
    assert op_equal(StaticOp([1, 2]), StaticOp([1, 2]))  # unhashable statics compare by value
    assert op_hash(StaticOp([1, 2])) == op_hash(StaticOp([1, 2]))
    assert op_equal(ContainerOp(list, (0, 1)), ContainerOp(list, (0, 1)))
    assert not op_equal(ContainerOp(list, (0, 1)), ContainerOp(tuple, (0, 1)))


def test_plan_folds_equal_leaf_only_layers_into_one_record():
    net = Net(4)
    graphdef = walk_graph(net, copy=False).graphdef
    plan = plan_ops(graphdef.ops)
    runs = [op for op in plan if type(op) is LeafNodesOp]
    # head alone, then the four layers of the list as one run
    assert [run.repeat for run in runs] == [1, 4]
    assert runs[1].node.node_type is Layer and [type(k) for k in runs[1].children] == [StaticOp, VariableOp]
    assert runs[1].picker is not None and runs[1].picker.num_variables == 1
    assert graphdef.plan is graphdef.plan  # made once per GraphDef


def test_plan_does_not_fold_nodes_that_differ_in_a_static():
    a, b = Layer(1.0), Layer(2.0)
    b.scale = 4
    graphdef = walk_graph([a, b], copy=False).graphdef
    runs = [op for op in plan_ops(graphdef.ops) if type(op) is LeafNodesOp]
    assert [run.repeat for run in runs] == [1, 1]
    merged = nnx.merge(*nnx.split([a, b]))
    assert [m.scale for m in merged] == [3, 4]


def test_build_returns_the_root_objects_and_containers_made():
    net = Net(2)
    graphdef, state = nnx.split(net)
    leaves = split_leaves(state).leaves
    built = program.build(graphdef, leaves)
    assert type(built.root) is Net and built.root is not net
    # the State's own Variables: objects by index are Net, head, head.w, layers, ...
    assert built.objects[0] is built.root and built.objects[2] is built.root.head.w is net.head.w
    assert built.root.tied is built.root.head.w
    copied = program.build(graphdef, leaves, copy=True)
    assert copied.root.head.w is not net.head.w
    np.testing.assert_array_equal(copied.root.head.w[...], net.head.w[...])


def test_build_checked_raises_on_a_leaf_of_the_wrong_variable_type():
    graphdef, state = nnx.split(Layer(1.0))
    with pytest.raises(program.LeafMismatch):
        program.build_checked(graphdef, [nnx.BatchStat(jnp.zeros(2))])
    built = program.build_checked(
        graphdef, [jnp.full((2,), 7.0)]
    )  # a raw value is boxed as the GraphDef says
    assert type(built.root.w) is nnx.Param
    np.testing.assert_array_equal(built.root.w[...], [7.0, 7.0])


def test_commit_into_writes_into_the_callers_objects():
    net = Net(2)
    objects: list = []
    graphdef = walk_graph(net, copy=False, objects=objects).graphdef
    old_w = net.head.w
    new_leaves = [jnp.full((2,), 5.0 + i) for i in range(graphdef.num_leaves)]
    built = program.commit_into(graphdef, new_leaves, dict(enumerate(objects)))
    assert built.root is net and net.head.w is old_w  # same objects, new values
    np.testing.assert_array_equal(net.head.w[...], [5.0, 5.0])
    np.testing.assert_array_equal(net.layers[1].w[...], [7.0, 7.0])


def test_split_remembers_its_leaves_by_position_for_merge():
    net = Net(2)
    graphdef, params, rest = nnx.split(net, nnx.Param, ...)
    record = split_leaves(params)
    assert record.graphdef is graphdef and record.group is split_leaves(rest).group
    assert record.group.size == 2 and (record.number, split_leaves(rest).number) == (0, 1)
    assert record.positions == list(range(graphdef.num_leaves))
    merged = nnx.merge(graphdef, params, rest)
    np.testing.assert_array_equal(merged.layers[1].w[...], [1.0, 1.0])
    assert split_leaves(nnx.State({"a": 1})) is None
