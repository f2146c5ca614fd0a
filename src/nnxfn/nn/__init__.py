"""Layers, initializers, activations, attention, recurrence, summaries."""

from nnxfn.nn import dtypes as dtypes
from nnxfn.nn import initializers as initializers
from nnxfn.nn import jax_pickle as _jax_pickle  # noqa: F401  (jitted functions pickle by name)
from nnxfn.nn.activations import *  # noqa: F401,F403  (re-exported names listed in __all__)
from nnxfn.nn.activations import __all__ as _activations
from nnxfn.nn.attention import MultiHeadAttention as MultiHeadAttention
from nnxfn.nn.attention_ops import (
    combine_masks as combine_masks,
    dot_product_attention as dot_product_attention,
    dot_product_attention_weights as dot_product_attention_weights,
    make_attention_mask as make_attention_mask,
    make_causal_mask as make_causal_mask,
)
from nnxfn.nn.conv import Conv as Conv, ConvTranspose as ConvTranspose
from nnxfn.nn.linear import (
    Einsum as Einsum,
    Embed as Embed,
    Linear as Linear,
    LinearGeneral as LinearGeneral,
)
from nnxfn.nn.activations import PReLU as PReLU
from nnxfn.nn.lora import LoRA as LoRA, LoRALinear as LoRALinear, LoRAParam as LoRAParam
from nnxfn.nn.normalization import (
    BatchNorm as BatchNorm,
    GroupNorm as GroupNorm,
    InstanceNorm as InstanceNorm,
    LayerNorm as LayerNorm,
    RMSNorm as RMSNorm,
    SpectralNorm as SpectralNorm,
    WeightNorm as WeightNorm,
)
from nnxfn.nn.pooling import avg_pool as avg_pool, max_pool as max_pool, min_pool as min_pool, pool as pool
from nnxfn.nn.recurrent import (
    RNN as RNN,
    Bidirectional as Bidirectional,
    GRUCell as GRUCell,
    LSTMCell as LSTMCell,
    OptimizedLSTMCell as OptimizedLSTMCell,
    RNNCellBase as RNNCellBase,
    SimpleCell as SimpleCell,
)
from nnxfn.nn.stochastic import Dropout as Dropout
from nnxfn.nn.summary import display as display, tabulate as tabulate

__all__ = [
    "dtypes",
    "initializers",
    *_activations,
    "MultiHeadAttention",
    "combine_masks",
    "dot_product_attention",
    "dot_product_attention_weights",
    "make_attention_mask",
    "make_causal_mask",
    "Conv",
    "ConvTranspose",
    "Einsum",
    "Embed",
    "Linear",
    "LinearGeneral",
    "PReLU",
    "LoRA",
    "LoRALinear",
    "LoRAParam",
    "BatchNorm",
    "GroupNorm",
    "InstanceNorm",
    "LayerNorm",
    "RMSNorm",
    "SpectralNorm",
    "WeightNorm",
    "avg_pool",
    "max_pool",
    "min_pool",
    "pool",
    "RNN",
    "Bidirectional",
    "GRUCell",
    "LSTMCell",
    "OptimizedLSTMCell",
    "RNNCellBase",
    "SimpleCell",
    "Dropout",
    "display",
    "tabulate",
]
