"""`nnx.transforms.iteration`: `vmap`, `pmap`, `scan` and the loops, under Flax's module name."""

from nnxfn.transforms.axes import StateAxes as StateAxes
from nnxfn.transforms.control_flow import fori_loop as fori_loop, while_loop as while_loop
from nnxfn.transforms.metadata import transform_metadata as transform_metadata
from nnxfn.transforms.scan import Carry as Carry, scan as scan
from nnxfn.transforms.vmap import pmap as pmap, vmap as vmap
