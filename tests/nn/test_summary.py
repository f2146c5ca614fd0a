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


PLAIN = dict(force_terminal=False, no_color=True, width=10_000)  # rich without colours


def _rows(table: str) -> list[list[str]]:
    """Cells of every table line (multi-line cells give several lines); rich or plain."""
    out = []
    for line in table.splitlines():
        for bar in ("│", "┃", "|"):
            if line.startswith(bar):
                out.append([c.strip() for c in line.strip(bar).split(bar)])
    return out


def tab(*args, **kwargs) -> str:
    return tabulate(*args, console_kwargs=PLAIN, **kwargs)


def _count(state, var_type) -> tuple[int, int]:
    leaves = [v.raw_value for _, v in state.flat_state() if isinstance(v, var_type)]
    return sum(x.size for x in leaves), sum(x.nbytes for x in leaves)


def test_rows_shapes_counts_and_bytes():
    model = Model(Rngs(0))
    table = tab(model, jnp.ones((5, 3)))
    rows = _rows(table)
    header = rows[0]
    assert header == ["path", "type", "inputs", "outputs", "BatchStat", "Param", "RngState"]
    firsts = [r for r in rows[1:] if r[1]]  # first line of each row
    assert [(r[0], r[1]) for r in firsts] == [
        ("", "Model"),
        ("block", "Block"),
        ("block/linear", "Linear"),
        ("block/bn", "BatchNorm"),
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
    total = [r for r in rows if r[3] == "Total"][0]  # the footer
    assert total[4:] == root[4:]
    assert f"Total Parameters: {n_param + n_stat + n_rng} ({b_param + b_stat + b_rng} B)" in table
    # a sub-module row lists its own Variables, then its sub-tree count
    assert "kernel: float32[3,4]" in table and "mean: float32[4]" in table
    head = [i for i, r in enumerate(rows) if r[0] == "head"][0]
    assert rows[head + 2][5] == "" and rows[head + 3][5] == "10 (40 B)"


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

    table = tab(Model(Rngs(0)), jnp.ones((5, 3)), depth=1, scale=2.0, table_kwargs={"title": "My model"})
    firsts = [r for r in _rows(table)[1:] if r[1]]
    assert [r[0] for r in firsts] == ["", "block", "head"]
    assert "scale: 2.0" in table and table.lstrip().startswith("My model")
    rows = [r for r in _rows(tab(Twice(), jnp.ones((1, 2))))[1:] if r[1]]
    # first path in canonical order; the second call (same object, same inputs) is one row
    assert [r[0] for r in rows] == ["", "alias"]
    assert rows[0][4] == "6 (24 B)"  # the shared Linear is counted once


def test_public_methods_are_rows_with_their_name_in_the_path():
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

    rows = [r for r in _rows(tab(Outer(), jnp.ones((1, 2))))[1:] if r[1]]
    assert [r[0] for r in rows] == ["", "holder/apply", "holder/lin"]
    assert rows[0][4] == "9 (36 B)"
    assert not callable(Holder())
    table = tab(Holder(), jnp.ones((1, 2)), method="apply")
    assert "float32[1,3]" in table

    class Private(Holder):
        def _forward(self, x):
            return self.lin(x) * 2

    rows = [r for r in _rows(tab(Private(), jnp.ones((1, 2)), method="_forward"))[1:] if r[1]]
    assert [(r[0], r[3]) for r in rows[:2]] == [("_forward", "float32[1,3]"), ("lin", "float32[1,3]")]


def test_compute_flops():
    model = Linear(16, 8, rngs=Rngs(0))
    table = tab(model, jnp.ones((4, 16)), compute_flops=True, compute_vjp_flops=True)
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
    with pytest.raises(
        TypeError, match=r"tabulate: expected an nnx.Module \(or another nnx.Pytree\), got int"
    ):
        tabulate(3, jnp.ones(2))
    with pytest.raises(AttributeError, match="tabulate: Broken has no method 'encode'"):
        tabulate(Broken(), jnp.ones((2, 3)), method="encode")


def test_display_prints_repr_outside_notebooks(capsys):
    display(Linear(2, 3, rngs=Rngs(0)), 5)
    out = capsys.readouterr().out
    assert "Linear(" in out and "kernel=Param(" in out and out.rstrip().endswith("5")


def test_docstring_examples_run():
    import doctest

    from nnxfn.nn import summary as module, summary_table

    for mod in (module, summary_table):
        result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0 and result.attempted > 0


class Stacked(Module):
    """Five Linear(3, 3) blocks built by `nnx.vmap` with split rngs, applied by `nnx.scan`."""

    def __init__(self, rngs: Rngs):
        import nnxfn as nnx

        @nnx.split_rngs(splits=5)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make(rngs):
            return Inner(rngs)

        self.blocks = make(rngs)
        self.head = Linear(3, 2, rngs=rngs)

    def __call__(self, x):
        import nnxfn as nnx

        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
        def body(x, block):
            return block(x)

        return self.head(body(x, self.blocks))


class Inner(Module):
    def __init__(self, rngs: Rngs):
        self.linear = Linear(3, 3, rngs=rngs)

    def __call__(self, x):
        return jax.nn.relu(self.linear(x))


def test_layers_stacked_by_vmap_and_scan_keep_their_path_and_counts():
    model = Stacked(Rngs(0))
    rows = [r for r in _rows(tab(model, jnp.ones((2, 3)), depth=1))[1:] if r[1]]
    assert [(r[0], r[1]) for r in rows] == [("", "Stacked"), ("blocks", "Inner"), ("head", "Linear")]
    assert rows[1][2:] == ["float32[2,3]", "float32[2,3]", "60 (240 B)"]  # 5 * (3*3 + 3)
    table = tab(model, jnp.ones((2, 3)))
    assert "blocks/linear" in table and "kernel: float32[5,3,3]" in table and "<new>" not in table


def test_rendered_by_rich_with_its_styling_kwargs():
    import rich.box

    model = Linear(2, 3, rngs=Rngs(0))
    table = tabulate(model, jnp.ones((1, 2)), console_kwargs=PLAIN)
    lines = table.splitlines()
    assert lines[1].startswith("┏") and lines[2].startswith("┃ path")  # rich's default box
    styled = tabulate(
        model,
        jnp.ones((1, 2)),
        console_kwargs=PLAIN,
        table_kwargs={"box": rich.box.ASCII, "title": "Mine"},
        column_kwargs={"justify": "right"},
    )
    lines = styled.splitlines()
    assert lines[0].strip() == "Mine" and lines[1].startswith("+-")
    assert lines[4].startswith("|      | Linear |")  # right-justified cells
    coloured = tabulate(model, jnp.ones((1, 2)))  # default console: force_terminal=True
    assert "\x1b[" in coloured
    narrow = tabulate(model, jnp.ones((1, 2)), console_kwargs={**PLAIN, "width": 40})
    assert max(len(line) for line in narrow.splitlines()) <= 40


def test_plain_text_fallback_without_rich(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "rich", None)  # `import rich` now fails
    table = tabulate(Model(Rngs(0)), jnp.ones((5, 3)))
    rows = _rows(table)
    assert table.splitlines()[1].startswith("+--") and rows[0][:4] == ["path", "type", "inputs", "outputs"]
    assert [r[0] for r in rows[1:] if r[1]] == ["", "block", "block/linear", "block/bn", "head"]
    assert [r for r in rows if r[3] == "Total"]


def test_inputs_and_outputs_layout_and_flops_trace_once():
    calls = []

    class Multi(Module):
        def __init__(self):
            self.w = Param(jnp.ones((4, 8)))

        def __call__(self, x, x2, *, opts=None):
            calls.append(1)
            y = x @ self.w + x2
            return {"y": y, "pair": (x, 2)}

    table = tab(Multi(), jnp.ones((1, 4)), jnp.ones((1, 8)), opts={}, compute_flops=True)
    root = [r for r in _rows(table)[1:]]
    assert [r[2] for r in root[:3]] == ["- float32[1,4]", "- float32[1,8]", "opts: {}"]
    # outputs as the jitted call returns them (flax too): keys sorted, Python ints as arrays
    assert [r[3] for r in root[:4]] == ["pair:", "- float32[1,4]", "- int32[]", "y: float32[1,8]"]
    assert len(calls) == 1  # the FLOP count reuses the one trace
