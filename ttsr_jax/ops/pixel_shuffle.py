"""PyTorch's PixelShuffle in NHWC."""

import jax.numpy as jnp


def pixel_shuffle(x: jnp.ndarray, factor: int = 2) -> jnp.ndarray:
  """(N, h, w, C*f*f) -> (N, h*f, w*f, C) with PyTorch's channel split (c major, then row, col).

  PyTorch: out[n, c, f*y + i, f*x + j] = in[n, c*f*f + f*i + j, y, x].
  """
  n, h, w, c = x.shape
  out_c = c // (factor * factor)
  x = x.reshape(n, h, w, out_c, factor, factor)
  x = x.transpose(0, 1, 4, 2, 5, 3)  # n, h, i, w, j, c
  return x.reshape(n, h * factor, w * factor, out_c)
