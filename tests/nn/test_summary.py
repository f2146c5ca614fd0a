"""tabulate: rows, shapes, counts/bytes against the model's State; display."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nnxfn import core
from nnxfn.facade.module import Module
from nnxfn.facade.rngs import Rngs
from nnxfn.facade.variables import BatchStat, Param, RngCount, RngState
from nnxfn.nn.linear import Linear
from nnxfn.nn.normalization import BatchNorm
from nnxfn.nn.summary import display, tabulate


class Block(Module):
    def __init__(self, rngs: Rngs):
        self.linear = Linear(3, 4, rngs=rngs)
        self.bn = BatchNorm(4, rngs=rngs)

    def __call__(self, x):
        return jax.nn.relu(self.bn(self.linear(x), use_running_average=False))


class Model(Module):
    def __init__(self, rngs: Rngs):
        self.block = Block(rngs)
        self.head = Linear(4, 2, rngs=rngs)
        self.rngs = rngs

    def __call__(self, x, *, scale=1.0):
        return self.head(self.block(x)) * scale


def _rows(table: str) -> list[list[str]]:
    """Cells of every table line (multi-line cells give several lines)."""
    return [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()
            if line.startswith("|")]


def _count(state, var_type) -> tuple[int, int]:
    leaves = [v.raw_value for _, v in state.flat_state() if isinstance(v, var_type)]
    return sum(x.size for x in leaves), sum(x.nbytes for x in leaves)


def test_rows_shapes_counts_and_bytes():
    model = Model(Rngs(0))
    table = tabulate(model, jnp.ones((5, 3)))
    rows = _rows(table)
    header = rows[0]
    assert header == ["path", "type", "inputs", "outputs", "BatchStat", "Param", "RngState"]
    firsts = [r for r in rows[1:] if r[1]]  # first line of each row
    assert [(r[0], r[1]) for r in firsts] == [
        ("", "Model"), ("block", "Block"), ("block/linear", "Linear"), ("block/bn", "BatchNorm"),
        ("head", "Linear"),
    ]
    root = firsts[0]
    assert root[2] == "float32[5,3]" and root[3] == "float32[5,2]"
    state = core.state(model)
    n_param, b_param = _count(state, Param)
    n_stat, b_stat = _count(state, BatchStat)
    n_rng, b_rng = _count(state, RngState)
    assert n_param == 3 * 4 + 4 + 4 + 4 + 4 * 2 + 2
    assert root[4] == f"{n_stat} ({b_stat} B)" and root[5] == f"{n_param} ({b_param} B)"
    assert root[6] == f"{n_rng} ({b_rng} B)"
    total = [r for r in rows if r[3] == "Total"][0]
    assert total[4:] == root[4:]
    assert f"Total Parameters: {n_param + n_stat + n_rng} ({b_param + b_stat + b_rng} B)" in table
    # a sub-module row lists its own Variables, then its sub-tree count
    assert "kernel: float32[3,4]" in table and "mean: float32[4]" in table
    head = [i for i, r in enumerate(rows) if r[0] == "head"][0]
    assert rows[head + 2][5] == "10 (40 B)"


def test_original_module_untouched_and_classes_restored():
    model = Model(Rngs(0))
    keep = (Param, BatchStat, RngCount)
    before = jax.tree.map(np.asarray, core.state(model, keep))
    tabulate(model, jnp.ones((5, 3)) * 3, compute_flops=True)
    jax.tree.map(np.testing.assert_array_equal, before, core.state(model, keep))
    assert "__call__" not in BatchNorm.__dict__ or BatchNorm.__dict__["__call__"].__name__ == "__call__"
    assert Linear.__call__.__qualname__ == "Linear.__call__"
    assert Block.__call__.__qualname__ == "Block.__call__"


def test_depth_kwargs_title_and_shared_module_called_twice():
    class Twice(Module):
        def __init__(self):
            self.lin = Linear(2, 2, rngs=Rngs(0))
            self.alias = self.lin

        def __call__(self, x):
            return self.alias(self.lin(x))

    table = tabulate(Model(Rngs(0)), jnp.ones((5, 3)), depth=1, scale=2.0,
                     table_kwargs={"title": "My model"})
    firsts = [r for r in _rows(table)[1:] if r[1]]
    assert [r[0] for r in firsts] == ["", "block", "head"]
    assert "scale: 2.0" in table and table.lstrip().startswith("My model")
    rows = [r for r in _rows(tabulate(Twice(), jnp.ones((1, 2))))[1:] if r[1]]
    assert [r[0] for r in rows] == ["", "alias", "alias"]  # first path in canonical order
    assert rows[0][4] == "6 (24 B)"  # the shared Linear is counted once


def test_submodule_without_call_is_listed_in_totals_only():
    class Holder(Module):  # no __call__: used through a method
        def __init__(self):
            self.lin = Linear(2, 3, rngs=Rngs(0))

        def apply(self, x):
            return self.lin(x)

    class Outer(Module):
        def __init__(self):
            self.holder = Holder()

        def __call__(self, x):
            return self.holder.apply(x)

    rows = [r for r in _rows(tabulate(Outer(), jnp.ones((1, 2))))[1:] if r[1]]
    assert [r[0] for r in rows] == ["", "holder/lin"]
    assert rows[0][4] == "9 (36 B)"
    assert not callable(Holder())
    table = tabulate(Holder(), jnp.ones((1, 2)), method="apply")
    assert "float32[1,3]" in table


def test_compute_flops():
    model = Linear(16, 8, rngs=Rngs(0))
    table = tabulate(model, jnp.ones((4, 16)), compute_flops=True, compute_vjp_flops=True)
    header, root = _rows(table)[0], _rows(table)[1]
    flops = int(root[header.index("flops")].replace(",", ""))
    vjp = int(root[header.index("vjp_flops")].replace(",", ""))
    assert flops >= 2 * 4 * 16 * 8  # the matmul alone
    assert vjp > flops


def test_errors():
    class Broken(Module):
        def __init__(self):
            self.lin = Linear(3, 4, rngs=Rngs(0))

        def __call__(self, x):
            return self.lin(x)

    with pytest.raises(ValueError, match=r"Linear: expected inputs of shape \(\.\.\., 3\)"):
        tabulate(Broken(), jnp.ones((2, 5)))
    assert Linear.__call__.__qualname__ == "Linear.__call__"  # restored after the error
    with pytest.raises(TypeError, match="tabulate: expected an nnx.Module, got int"):
        tabulate(3, jnp.ones(2))
    with pytest.raises(AttributeError, match="tabulate: Broken has no method 'encode'"):
        tabulate(Broken(), jnp.ones((2, 3)), method="encode")


def test_display_prints_repr_outside_notebooks(capsys):
    display(Linear(2, 3, rngs=Rngs(0)), 5)
    out = capsys.readouterr().out
    assert "Linear(" in out and "kernel=Param(" in out and out.rstrip().endswith("5")


def test_docstring_examples_run():
    import doctest

    from nnxfn.nn import summary as module

    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
