"""Flax modules, one per reference component."""
