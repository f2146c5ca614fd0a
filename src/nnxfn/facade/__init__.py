"""Mutable objects users touch: Module, Variables, Rngs, containers."""
