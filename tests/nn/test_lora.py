"""LoRA and LoRALinear: shapes, types, y = base(x) + x @ A @ B, gradients, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nnxfn import core
from nnxfn.facade.rngs import Rngs
from nnxfn.facade.variables import Param
from nnxfn.nn import initializers
from nnxfn.nn.linear import Linear
from nnxfn.nn.lora import LoRA, LoRALinear, LoRAParam

X = jax.random.normal(jax.random.key(0), (5, 3))


def test_shapes_types_and_defaults():
    lora = LoRA(3, 2, 4, rngs=Rngs(0))
    assert isinstance(lora.lora_a, LoRAParam) and issubclass(LoRAParam, Param)
    assert lora.lora_a.shape == (3, 2) and lora.lora_b.shape == (2, 4)
    assert not lora.lora_b[...].any()  # b starts at zero
    assert lora.base_module is None
    layer = LoRALinear(3, 4, lora_rank=2, rngs=Rngs(0))
    assert isinstance(layer, Linear)
    kinds = {".".join(p): type(v) for p, v in core.state(layer).flat_state()}
    assert kinds == {"kernel": Param, "bias": Param, "lora.lora_a": LoRAParam, "lora.lora_b": LoRAParam}


def test_fresh_lora_linear_equals_its_linear():
    layer = LoRALinear(3, 4, lora_rank=2, rngs=Rngs(0))
    ref = X @ layer.kernel[...] + layer.bias[...]
    np.testing.assert_allclose(layer(X), ref, atol=1e-6)


def test_lora_linear_output_is_base_plus_low_rank():
    layer = LoRALinear(
        3, 4, lora_rank=2, use_bias=False, b_initializer=initializers.normal(1.0), rngs=Rngs(1)
    )
    a, b = layer.lora.lora_a[...], layer.lora.lora_b[...]
    assert layer.bias is None
    np.testing.assert_allclose(layer(X), X @ layer.kernel[...] + X @ a @ b, atol=1e-5)


def test_lora_alone_and_with_base_module():
    lora = LoRA(3, 2, 4, b_initializer=initializers.normal(1.0), rngs=Rngs(2))
    a, b = lora.lora_a[...], lora.lora_b[...]
    np.testing.assert_allclose(lora(X), X @ a @ b, atol=1e-5)
    base = Linear(3, 4, rngs=Rngs(3))
    wrapped = LoRA(3, 2, 4, base_module=base, b_initializer=initializers.normal(1.0), rngs=Rngs(2))
    np.testing.assert_allclose(wrapped(X), base(X) + X @ a @ b, atol=1e-5)
    assert {p[0] for p, _ in core.state(wrapped).flat_state()} == {"base_module", "lora_a", "lora_b"}


def test_custom_param_type_and_metadata_and_dtypes():
    class Adapter(Param):
        pass

    layer = LoRALinear(
        3,
        4,
        lora_rank=2,
        lora_param_type=Adapter,
        lora_dtype=jnp.bfloat16,
        a_metadata={"sharding": ("in", None)},
        rngs=Rngs(0),
    )
    assert type(layer.lora.lora_a) is Adapter and layer.lora.lora_a.out_sharding == ("in", None)
    assert layer.lora(X).dtype == jnp.bfloat16
    lora = LoRA(3, 2, 4, param_dtype=jnp.float16, rngs=Rngs(0))
    assert lora.lora_a.dtype == jnp.float16


def test_grad_only_wrt_lora_params():
    layer = LoRALinear(3, 4, lora_rank=2, rngs=Rngs(0))
    graphdef, lora_params, rest = core.split(layer, LoRAParam, ...)

    def loss(lp):
        return (core.merge(graphdef, lp, rest)(X) ** 2).sum()

    grads = jax.grad(loss)(lora_params)
    assert {p for p, _ in grads.flat_state()} == {("lora", "lora_a"), ("lora", "lora_b")}
    # with B = 0, dL/dA = 0 and dL/dB = A^T x^T dL/dy
    y = layer(X)
    np.testing.assert_allclose(grads["lora"]["lora_a"][...], 0.0)
    expected_b = (X @ layer.lora.lora_a[...]).T @ (2 * y)
    np.testing.assert_allclose(grads["lora"]["lora_b"][...], expected_b, rtol=1e-4, atol=1e-4)


def test_errors_name_layer_and_shape():
    with pytest.raises(ValueError, match=r"LoRA: expected inputs of shape \(\.\.\., 3\).*got shape \(5, 7\)"):
        LoRA(3, 2, 4, rngs=Rngs(0))(jnp.ones((5, 7)))
    with pytest.raises(ValueError, match=r"Linear: expected inputs of shape \(\.\.\., 3\)"):
        LoRALinear(3, 4, lora_rank=2, rngs=Rngs(0))(jnp.ones((5, 7)))
    with pytest.raises(TypeError, match="LoRA: `base_module` must be callable"):
        LoRA(3, 2, 4, base_module=jnp.ones(3), rngs=Rngs(0))
    with pytest.raises(ValueError, match="LoRA: `lora_rank` must be >= 1, got 0"):
        LoRA(3, 0, 4, rngs=Rngs(0))


def test_docstring_examples_run():
    import doctest

    from nnxfn.nn import lora as module

    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
