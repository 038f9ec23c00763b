"""MainNet: the texture-transfer backbone with cross-scale feature integration (`model/MainNet.py`).

Submodule names follow the reference's state-dict keys (`SFE.RBs.0.conv1` -> `SFE/RBs_0/conv1`).
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ttsr_jax.models.layers import Conv2d
from ttsr_jax.ops.bicubic import upsample_bicubic
from ttsr_jax.ops.pixel_shuffle import pixel_shuffle

relu = jax.nn.relu


def _cat(*xs: jnp.ndarray) -> jnp.ndarray:
  return jnp.concatenate(xs, axis=-1)


class ResBlock(nn.Module):
  n_feats: int
  res_scale: float = 1.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = lambda name: Conv2d(self.n_feats, dtype=self.dtype, name=name)
    y = conv("conv1")(x)
    y = conv("conv2")(relu(y))
    return y * self.res_scale + x


def _res_blocks(block: type, x: jnp.ndarray, name: str, count: int, **block_fields
                ) -> jnp.ndarray:
  """`count` residual blocks in a row, named `{name}_0`, `{name}_1`, ..."""
  for i in range(count):
    x = block(**block_fields, name=f"{name}_{i}")(x)
  return x


class SFE(nn.Module):
  """Shallow feature extraction; the skip is the post-ReLU head output."""

  n_feats: int
  num_res_blocks: int
  res_scale: float = 1.0
  dtype: jnp.dtype = jnp.float32
  block: type = ResBlock

  @nn.compact
  def __call__(self, x):
    conv = lambda name: Conv2d(self.n_feats, dtype=self.dtype, name=name)
    head = relu(conv("conv_head")(x))
    y = _res_blocks(self.block, head, "RBs", self.num_res_blocks, n_feats=self.n_feats,
                    res_scale=self.res_scale, dtype=self.dtype)
    return conv("conv_tail")(y) + head


class CSFI2(nn.Module):
  """Cross-scale feature integration of a 1x and a 2x branch."""

  n_feats: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x1, x2):
    conv = lambda name, k=3, s=1: Conv2d(self.n_feats, k, s, dtype=self.dtype, name=name)
    x12 = relu(conv("conv12", 1)(upsample_bicubic(x1, 2)))
    x21 = relu(conv("conv21", 3, 2)(x2))
    x1 = relu(conv("conv_merge1")(_cat(x1, x21)))
    x2 = relu(conv("conv_merge2")(_cat(x2, x12)))
    return x1, x2


class CSFI3(nn.Module):
  """Cross-scale feature integration of 1x, 2x and 4x branches."""

  n_feats: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x1, x2, x3):
    conv = lambda name, k=3, s=1: Conv2d(self.n_feats, k, s, dtype=self.dtype, name=name)
    x12 = relu(conv("conv12", 1)(upsample_bicubic(x1, 2)))
    x13 = relu(conv("conv13", 1)(upsample_bicubic(x1, 4)))
    x21 = relu(conv("conv21", 3, 2)(x2))
    x23 = relu(conv("conv23", 1)(upsample_bicubic(x2, 2)))
    x31 = relu(conv("conv31_2", 3, 2)(relu(conv("conv31_1", 3, 2)(x3))))
    x32 = relu(conv("conv32", 3, 2)(x3))
    x1 = relu(conv("conv_merge1")(_cat(x1, x21, x31)))
    x2 = relu(conv("conv_merge2")(_cat(x2, x12, x32)))
    x3 = relu(conv("conv_merge3")(_cat(x3, x13, x23)))
    return x1, x2, x3


class MergeTail(nn.Module):
  n_feats: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x1, x2, x3):
    conv = lambda feats, name, k=3: Conv2d(feats, k, dtype=self.dtype, name=name)
    x13 = relu(conv(self.n_feats, "conv13", 1)(upsample_bicubic(x1, 4)))
    x23 = relu(conv(self.n_feats, "conv23", 1)(upsample_bicubic(x2, 2)))
    y = relu(conv(self.n_feats, "conv_merge")(_cat(x3, x13, x23)))
    y = conv(self.n_feats // 2, "conv_tail1")(y)
    y = conv(3, "conv_tail2", 1)(y)
    return jnp.clip(y, -1.0, 1.0)


class MainNet(nn.Module):
  """(lr, S, T_lv3, T_lv2, T_lv1) -> sr, all NHWC; lr in [-1, 1], sr clamped to [-1, 1].

  `remat` keeps only the inputs of every ResBlock, CSFI and the merge tail for the backward pass
  and recomputes their insides (a memory knob: same numbers, about a third more FLOPs). Whole
  stages would be too coarse: the 4x stage's activations would all be live again while it is
  differentiated, so the peak would not move.
  """

  n_feats: int = 64
  num_res_blocks: Sequence[int] = (16, 16, 8, 4)
  res_scale: float = 1.0
  dtype: jnp.dtype = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, lr, s, t_lv3, t_lv2, t_lv1):
    n_feats, dtype = self.n_feats, self.dtype
    sfe_blocks, stage1_blocks, stage2_blocks, stage3_blocks = self.num_res_blocks
    conv = lambda feats, name: Conv2d(feats, dtype=dtype, name=name)
    wrap = nn.remat if self.remat else (lambda module: module)
    block, csfi2, csfi3, merge_tail = (wrap(m) for m in (ResBlock, CSFI2, CSFI3, MergeTail))
    block_fields = dict(n_feats=n_feats, res_scale=self.res_scale, dtype=dtype)
    s = s.astype(dtype)

    # Stage 1 (1x): shallow features, soft-attention fusion with T_lv3, residual trunk.
    f = SFE(n_feats=n_feats, num_res_blocks=sfe_blocks, res_scale=self.res_scale, dtype=dtype,
            block=block, name="SFE")(lr.astype(dtype))
    f = f + conv(n_feats, "conv11_head")(_cat(f, t_lv3.astype(dtype))) * s
    trunk = _res_blocks(block, f, "RB11", stage1_blocks, **block_fields)
    x11 = f + conv(n_feats, "conv11_tail")(trunk)

    # Stage 2 (1x, 2x).
    x21 = x11
    x22 = relu(pixel_shuffle(conv(4 * n_feats, "conv12")(x11)))
    fused = conv(n_feats, "conv22_head")(_cat(x22, t_lv2.astype(dtype)))
    x22 = x22 + fused * upsample_bicubic(s, 2)
    r1, r2 = csfi2(n_feats=n_feats, dtype=dtype, name="ex12")(x21, x22)
    for i in range(stage2_blocks):
      r1 = block(**block_fields, name=f"RB21_{i}")(r1)
      r2 = block(**block_fields, name=f"RB22_{i}")(r2)
    x21, x22 = x21 + conv(n_feats, "conv21_tail")(r1), x22 + conv(n_feats, "conv22_tail")(r2)

    # Stage 3 (1x, 2x, 4x).
    x31, x32 = x21, x22
    x33 = relu(pixel_shuffle(conv(4 * n_feats, "conv23")(x22)))
    fused = conv(n_feats, "conv33_head")(_cat(x33, t_lv1.astype(dtype)))
    x33 = x33 + fused * upsample_bicubic(s, 4)
    r1, r2, r3 = csfi3(n_feats=n_feats, dtype=dtype, name="ex123")(x31, x32, x33)
    for i in range(stage3_blocks):
      r1 = block(**block_fields, name=f"RB31_{i}")(r1)
      r2 = block(**block_fields, name=f"RB32_{i}")(r2)
      r3 = block(**block_fields, name=f"RB33_{i}")(r3)
    x31 = x31 + conv(n_feats, "conv31_tail")(r1)
    x32 = x32 + conv(n_feats, "conv32_tail")(r2)
    x33 = x33 + conv(n_feats, "conv33_tail")(r3)
    sr = merge_tail(n_feats=n_feats, dtype=dtype, name="merge_tail")(x31, x32, x33)
    return sr.astype(jnp.float32)
