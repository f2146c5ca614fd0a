"""`nnx.ids`: ids that stay unique under copying, under Flax's module name."""

from nnxfn.core.ids import UUID as UUID, UUIDManager as UUIDManager, uuid as uuid
