"""PyTorch's `F.interpolate(mode='bicubic', align_corners=False)` for integer upscaling.

`jax.image.resize(..., 'bicubic')` uses the Keys kernel with A = -0.5; the reference network
resamples features and S with PyTorch's A = -0.75, half-pixel centres and edge clamping, without
antialiasing. For an integer factor s every output index o = s*k + phase reads four source taps
starting at k + first_tap with fixed weights, so the operator is a few shifted, weighted sums.
"""

import functools

from jax import lax
import jax.numpy as jnp
import numpy as np

_A = -0.75


def _cubic_weight(d: float) -> float:
  d = abs(d)
  if d <= 1:
    return ((_A + 2) * d - (_A + 3)) * d * d + 1
  if d < 2:
    return ((_A * d - 5 * _A) * d + 8 * _A) * d - 4 * _A
  return 0.0


@functools.cache
def phase_taps(scale: int) -> tuple[tuple[int, tuple[float, ...]], ...]:
  """For each output phase: (offset of the first source tap relative to k, four tap weights)."""
  taps = []
  for phase in range(scale):
    src = (phase + 0.5) / scale - 0.5
    first = int(np.floor(src)) - 1
    frac = src - np.floor(src)
    weights = tuple(_cubic_weight(frac + 1 - t) for t in range(4))
    taps.append((first, weights))
  return tuple(taps)


def _upsample_axis(x: jnp.ndarray, scale: int, axis: int) -> jnp.ndarray:
  n = x.shape[axis]
  pad = [(0, 0)] * x.ndim
  pad[axis] = (2, 2)
  padded = jnp.pad(x, pad, mode="edge")  # edge replication == PyTorch's index clamping
  phases = []
  for first, weights in phase_taps(scale):
    taps = [lax.slice_in_dim(padded, first + t + 2, first + t + 2 + n, axis=axis) for t in range(4)]
    out = taps[0] * weights[0]
    for tap, w in zip(taps[1:], weights[1:]):
      out = out + tap * w
    phases.append(out)
  stacked = jnp.stack(phases, axis=axis + 1)  # (..., n, scale, ...) -> index s*k + phase
  new_shape = list(x.shape)
  new_shape[axis] = n * scale
  return stacked.reshape(new_shape)


def upsample_bicubic(x: jnp.ndarray, scale: int) -> jnp.ndarray:
  """Upsamples an NHWC array by an integer `scale` exactly as PyTorch's bicubic (A=-0.75).

  Width is interpolated before height, matching the order of PyTorch's CPU kernel.
  """
  return _upsample_axis(_upsample_axis(x, scale, axis=2), scale, axis=1)
