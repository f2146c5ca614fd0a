"""`nnx.visualization`: showing graph objects (`nnx.display`)."""

from nnxfn.nn.summary import display as display
