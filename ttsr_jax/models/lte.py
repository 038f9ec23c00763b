"""LTE, the learnable texture extractor: VGG19 relu1_1 / relu2_1 / relu3_1 (reference
`model/LTE.py`)."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from ttsr_jax.models.layers import Conv2d
from ttsr_jax.models.vgg import VGG19_LAYERS, imagenet_normalize, vgg19_features

LTE_TAPS = ("relu1_1", "relu2_1", "relu3_1")
# lv1 (relu1_1) is relu(this convolution of `lv1_input`).
_LV1_CONV = f"features_{VGG19_LAYERS[0][1]}"


def lv1_input(x01: jnp.ndarray) -> jnp.ndarray:
  """What the LTE's first convolution reads of [0, 1] images."""
  return imagenet_normalize(x01)


def lv1_conv(lte_params: dict) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(HWIO kernel, bias) of the convolution that makes lv1, from the LTE's parameters."""
  conv = lte_params[_LV1_CONV]
  return conv["kernel"], conv["bias"]


class LTE(nn.Module):
  """Maps [0, 1] images to (lv1, lv2, lv3) texture features at full, 1/2 and 1/4 resolution.

  `reduce_lv3` adds the Exp1-3 variant: a learnable 3x3 conv + ReLU turning the 256 relu3_1
  channels into 64, used for the search and for the level-3 texture (the ReLU keeps the features
  non-negative like every other level, so S stays a cosine similarity in [0, 1]).
  """

  reduce_lv3: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x01: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    feats = vgg19_features(x01, LTE_TAPS, self.dtype)
    lv1, lv2, lv3 = (feats[t] for t in LTE_TAPS)
    if self.reduce_lv3:
      lv3 = jax.nn.relu(Conv2d(64, dtype=self.dtype, name="reduce_lv3")(lv3))
    return lv1, lv2, lv3
