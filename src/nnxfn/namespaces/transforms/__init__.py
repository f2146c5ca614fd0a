"""Namespaces installed under `nnxfn.transforms` (see `nnxfn/namespaces/__init__.py`)."""
