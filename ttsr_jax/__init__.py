"""TTSR (texture transformer super-resolution) in JAX/Flax, matching the PyTorch reference."""
