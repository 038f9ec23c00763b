"""torchvision's VGG19 `features`, the backbone of the LTE and of the perceptual loss.

Parameters are named `features_{k}` after torchvision's layer index k, so a torchvision or
reference key (`features.28.weight`, `LTE.slice3.10.weight`, `slice1.28.weight`) maps to one name.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ttsr_jax.models.layers import Conv2d

# (torchvision index, output channels); "pool" is a 2x2/2 max-pool (floor mode).
VGG19_LAYERS = (
    ("relu1_1", 0, 64), ("relu1_2", 2, 64), "pool",
    ("relu2_1", 5, 128), ("relu2_2", 7, 128), "pool",
    ("relu3_1", 10, 256), ("relu3_2", 12, 256), ("relu3_3", 14, 256), ("relu3_4", 16, 256), "pool",
    ("relu4_1", 19, 512), ("relu4_2", 21, 512), ("relu4_3", 23, 512), ("relu4_4", 25, 512), "pool",
    ("relu5_1", 28, 512),
)

_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_STD = np.array([0.229, 0.224, 0.225], np.float32)
# The reference's MeanShift is a frozen 1x1 conv with weight diag(1/std) and bias -mean/std, both
# formed in float32; applying it as x * w + b reproduces it bit for bit (the off-diagonal zeros
# add nothing).
MEAN_SHIFT_SCALE = np.float32(1.0) / _STD
MEAN_SHIFT_BIAS = -np.float32(1.0) * _MEAN / _STD


def imagenet_normalize(x01: jnp.ndarray) -> jnp.ndarray:
  """The reference's MeanShift: (x - mean) / std per channel for inputs in [0, 1]."""
  return x01 * MEAN_SHIFT_SCALE + MEAN_SHIFT_BIAS


def conv_indices(last: str) -> tuple[int, ...]:
  """torchvision indices of the convs up to and including the one feeding `last`."""
  indices = []
  for layer in VGG19_LAYERS:
    if layer == "pool":
      continue
    indices.append(layer[1])
    if layer[0] == last:
      return tuple(indices)
  raise ValueError(f"unknown VGG19 layer {last!r}; expected one of relu1_1 .. relu5_1")


def _max_pool(x: jnp.ndarray) -> jnp.ndarray:
  return nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")


def vgg19_features(x01: jnp.ndarray, taps: tuple[str, ...], dtype=jnp.float32
                   ) -> dict[str, jnp.ndarray]:
  """Runs VGG19 on [0, 1] NHWC images up to the last of `taps`; returns those ReLU outputs.

  Must be called inside a compact method: the convs become submodules `features_{k}` of the caller.
  """
  x = imagenet_normalize(x01)
  out = {}
  last = taps[-1]
  for layer in VGG19_LAYERS:
    if layer == "pool":
      x = _max_pool(x)
      continue
    name, index, channels = layer
    x = jax.nn.relu(Conv2d(channels, dtype=dtype, name=f"features_{index}")(x))
    if name in taps:
      out[name] = x
    if name == last:
      return out
  raise ValueError(f"unknown VGG19 layer {last!r}")


class VGG19(nn.Module):
  """Frozen VGG19 feature network used by the perceptual loss (relu5_1 by default)."""

  last: str = "relu5_1"
  dtype: jnp.dtype = jnp.float32  # compute dtype (models/precision.py)

  @nn.compact
  def __call__(self, x01: jnp.ndarray) -> jnp.ndarray:
    """float32 features (the perceptual loss reduces them in float32) whatever `dtype`."""
    features = vgg19_features(x01, (self.last,), self.dtype)[self.last]
    return features.astype(jnp.float32)
