"""WGAN-GP discriminator (reference `loss/discriminator.py`)."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from ttsr_jax.models.layers import Conv2d, Linear

# (output channels, stride) of conv1 .. conv10.
_CONVS = ((32, 1), (32, 2), (64, 1), (64, 2), (128, 1), (128, 2), (256, 1), (256, 2), (512, 1),
          (512, 2))


def _lrelu(x):
  return jax.nn.leaky_relu(x, 0.2)


class Discriminator(nn.Module):
  """(N, in_size, in_size, 3) images in [-1, 1] -> (N, 1) critic scores (no sigmoid).

  fc1's input width is the reference's left-to-right `in_size//32*in_size//32*512`; like the
  reference, only sizes where that equals the flattened conv10 output (e.g. 160) are usable.
  """

  in_size: int = 160
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    if x.shape[1:3] != (self.in_size, self.in_size):
      raise ValueError(f"Discriminator expects {self.in_size}x{self.in_size} inputs, got "
                       f"{x.shape[1]}x{x.shape[2]} (set train_crop_size = in_size / 4)")
    for i, (channels, stride) in enumerate(_CONVS, start=1):
      x = _lrelu(Conv2d(channels, 3, stride, dtype=self.dtype, name=f"conv{i}")(x))
    # The reference flattens NCHW (channel-major); transposing keeps its fc1 weights usable.
    x = x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)
    expected = self.in_size // 32 * self.in_size // 32 * 512
    if x.shape[1] != expected:
      raise ValueError(f"in_size {self.in_size}: fc1 expects {expected} inputs as in the "
                       f"reference, but conv10 gives {x.shape[1]}")
    x = _lrelu(Linear(1024, dtype=self.dtype, name="fc1")(x))
    return Linear(1, dtype=self.dtype, name="fc2")(x).astype(jnp.float32)
