"""Array operations that must match PyTorch exactly (resampling, pixel shuffle, patches)."""
