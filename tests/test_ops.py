"""PyTorch-exact resampling and pixel shuffle."""

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from parity import U32, gamma
from ttsr_jax.ops.bicubic import phase_taps, upsample_bicubic
from ttsr_jax.ops.pixel_shuffle import pixel_shuffle

# (first tap relative to k, weights) per output phase, checked against PyTorch's bicubic.
SPEC_TABLE = {
    2: [(-2, (-9, 67, 225, -27), 256), (-1, (-27, 225, 67, -9), 256)],
    4: [(-2, (-135, 873, 1535, -225), 2048), (-2, (-21, 235, 1981, -147), 2048),
        (-1, (-147, 1981, 235, -21), 2048), (-1, (-225, 1535, 873, -135), 2048)],
}


@pytest.mark.parametrize("scale", [2, 4])
def test_bicubic_weights_are_the_spec_table(scale):
  for (first, weights), (want_first, numerators, denominator) in zip(phase_taps(scale),
                                                                     SPEC_TABLE[scale]):
    assert first == want_first
    assert [Fraction(w) for w in weights] == [Fraction(n, denominator) for n in numerators]


def _bicubic_rounding_bound(scale: int, max_abs: float) -> float:
  """How far a float32 bicubic upsampling can be from the exact one, for inputs up to `max_abs`:
  each of its two separable passes sums 4 taps (gamma_4 of the sum of |weight x value|, at most
  W = max sum |w| times its input's magnitude) and passes the previous error on times W; 2 u more
  cover the rounding of float64 inputs, or of taps computed in float32 (jax.image's)."""
  taps_abs_sum = max(sum(abs(float(w)) for w in weights) for _, weights in phase_taps(scale))
  return (2 * U32 + 2 * gamma(4)) * taps_abs_sum ** 2 * max_abs


@pytest.mark.parametrize("scale", [2, 4])
def test_bicubic_matches_a_direct_evaluation_with_edge_clamping(scale):
  x = np.random.RandomState(0).standard_normal((2, 5, 7, 3)).astype(np.float64)
  taps = phase_taps(scale)

  def reference_1d(v, axis):
    n = v.shape[axis]
    out = []
    for o in range(n * scale):
      first, weights = taps[o % scale]
      k = o // scale
      idx = [min(max(k + first + t, 0), n - 1) for t in range(4)]
      out.append(sum(w * np.take(v, i, axis=axis) for w, i in zip(weights, idx)))
    return np.stack(out, axis=axis)

  want = reference_1d(reference_1d(x, 2), 1)
  got = np.asarray(upsample_bicubic(jnp.asarray(x, jnp.float32), scale))
  bound = _bicubic_rounding_bound(scale, np.abs(x).max())  # float64 adds ~1e-16
  np.testing.assert_allclose(got, want, rtol=0, atol=bound)


@pytest.mark.parametrize("scale", [2, 4])
def test_jax_cubic_pytorch_agrees_only_without_antialiasing(scale):
  # jax.image's CUBIC_PYTORCH equals PyTorch's kernel when antialias=False (rounding order
  # aside); its default antialias=True is a different operator even when upsampling.
  x = jax.random.normal(jax.random.key(1), (1, 6, 5, 2))
  shape = (1, 6 * scale, 5 * scale, 2)
  ours = upsample_bicubic(x, scale)
  plain = jax.image.resize(x, shape, jax.image.ResizeMethod.CUBIC_PYTORCH, antialias=False)
  default = jax.image.resize(x, shape, jax.image.ResizeMethod.CUBIC_PYTORCH)
  bound = 2 * _bicubic_rounding_bound(scale, float(jnp.abs(x).max()))  # each from the exact
  assert float(jnp.abs(ours - plain).max()) <= bound
  assert float(jnp.abs(ours - default).max()) > 1e-2 > 100 * bound


def test_pixel_shuffle_follows_pytorch_channel_split():
  n, h, w, c = 2, 3, 4, 5
  x = np.arange(n * h * w * 4 * c, dtype=np.float32).reshape(n, h, w, 4 * c)
  out = np.asarray(pixel_shuffle(jnp.asarray(x)))
  assert out.shape == (n, 2 * h, 2 * w, c)
  for ch in range(c):
    for i in range(2):
      for j in range(2):
        np.testing.assert_array_equal(out[:, i::2, j::2, ch], x[:, :, :, 4 * ch + 2 * i + j])
