"""`from nnxfn import nnx` gives the same namespace as `import nnxfn as nnx`."""

import sys

sys.modules[__name__] = sys.modules["nnxfn"]
