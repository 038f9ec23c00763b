"""Tiles for inference on large LR images: the receptive field that makes them exact, and the plan.

A tile is a window of the LR image (and the same window, x4, of its bicubic upsampling `lrsr`)
run through the model on its own; only its core, the window less a halo on each side that is not
an image border, goes into the output. Every layer sees the same input values inside the window
as in the whole-image run, so a core pixel is exact when the window holds the pixel's whole
receptive field: that radius, in LR pixels, is `receptive_radius`.

The radius is derived backwards from an output pixel through the architecture (NHWC, LR pixel
units, a pixel of scale k covering 1/k LR pixels):
  * a 3x3 convolution at scale k adds 1/k; a 3x3 stride-2 one down to scale k adds 1/(2k) (its
    window sits inside the input pixels it reads, centred); 1x1 convolutions, ReLUs, sums,
    products, pixel shuffle and 2x2 max-pools add nothing;
  * PyTorch's bicubic upsampling by f from scale k reads four taps per output pixel
    (`ops.bicubic.phase_taps`), at most `_bicubic_radius(f) / k` away;
  * the texture transfer (hard attention) folds 3x3 patches: T at a position reads the index of
    the LR positions within one LR pixel; S and the index read the 3x3 lv3 patch around them
    (one more LR pixel); lv3 is VGG19's relu3_1 of `lrsr` (two convs at 4x, two at 2x, one at
    1x, plus the Exp1-3 reduction conv) at a quarter of lrsr's resolution.
Image borders (zero padding, the bicubic's edge clamp, the transfer's fold) are borders of the
window only where they are borders of the image, so they need no extra margin. Tiles start at
whole LR pixels, i.e. at multiples of 4 in lrsr, so the pools see the same 2x2 groups.
"""

import math
from typing import NamedTuple, Sequence

from ttsr_jax.ops.bicubic import phase_taps


def _bicubic_radius(factor: int) -> float:
  """How far (in source pixels) an output pixel's taps reach beyond the pixel itself."""
  reach = 0.0
  for phase, (first, _) in enumerate(phase_taps(factor)):
    # Output pixel f*m + phase covers [m + phase/f, m + (phase+1)/f); its taps m+first..m+first+3
    # cover [m + first, m + first + 4).
    reach = max(reach, phase / factor - first, first + 4 - (phase + 1) / factor)
  return reach


def receptive_radius(num_res_blocks: Sequence[int], lte_reduce_lv3: bool = False) -> float:
  """How far, in LR pixels, an output pixel depends on the LR image and on lrsr (see above).

  The MainNet structure (models/main_net.py) is walked from sr back to its inputs; each value is
  the radius that node is needed at. n_feats does not matter, only the layer structure.
  """
  a, b, c, d = num_res_blocks
  conv = lambda k: 1 / k  # 3x3 conv at scale k
  down = lambda k: 1 / (2 * k)  # 3x3 stride-2 conv producing scale k
  up = lambda f, k: _bicubic_radius(f) / k  # bicubic x f of a scale-k input

  # Merge tail at 4x: conv_merge and conv_tail1 (3x3), conv_tail2 (1x1); x13 and x23 are 1x1
  # convs of bicubic upsamplings of x31 (x4) and x32 (x2).
  merge = 2 * conv(4)
  out31, out32, out33 = merge + up(4, 1), merge + up(2, 2), merge
  # Stage 3: x3k = x3k_in + conv_tail(d ResBlocks(CSFI3 output k)).
  m1, m2, m3 = (r + (1 + 2 * d) * conv(k) + conv(k)  # + the CSFI's conv_merge
                for r, k in ((out31, 1), (out32, 2), (out33, 4)))
  in31 = max(out31, m1, m2 + up(2, 1), m3 + up(4, 1))
  in32 = max(out32, m2, m1 + down(1), m3 + up(2, 2))
  in33 = max(out33, m3, m1 + down(2) + down(1), m2 + down(2))
  # Stage 3 head: x33_in = x33 + conv33_head([x33, T_lv1]) * up4(S), x33 = shuffle(conv23(x22)).
  t_lv1, s3 = in33 + conv(4), in33 + up(4, 1)
  out21, out22 = in31, max(in32, in33 + conv(4) + conv(2))
  # Stage 2: x2k = x2k_in + conv_tail(c ResBlocks(CSFI2 output k)).
  m1, m2 = out21 + (2 + 2 * c) * conv(1), out22 + (2 + 2 * c) * conv(2)
  in21 = max(out21, m1, m2 + up(2, 1))
  in22 = max(out22, m2, m1 + down(1))
  # Stage 2 head: x22_in = x22 + conv22_head([x22, T_lv2]) * up2(S), x22 = shuffle(conv12(x11)).
  t_lv2, s2 = in22 + conv(2), in22 + up(2, 1)
  x11 = max(in21, in22 + conv(2) + conv(1))
  # Stage 1: x11 = f + conv11_tail(b ResBlocks(f)), f = f0 + conv11_head([f0, T_lv3]) * S,
  # f0 = SFE(lr) = conv_tail(a ResBlocks(head)) + head, head = conv_head(lr).
  f = x11 + (1 + 2 * b) * conv(1)
  t_lv3, s1 = f + conv(1), f
  lr = f + conv(1) + (1 + 2 * a) * conv(1) + conv(1)
  # Transfer: T reads the index within one LR pixel; S and the index read a 3x3 lv3 patch.
  index = max(t_lv1, t_lv2, t_lv3) + 1
  lrsr_lv3 = max(index, s1, s2, s3) + 1
  # LTE: relu3_1 (and the Exp1-3 conv) at 1x, two convs at 2x, two at 4x, between 2x2 pools.
  lrsr = lrsr_lv3 + conv(1) * (1 + lte_reduce_lv3) + 2 * conv(2) + 2 * conv(4)
  return max(lr, lrsr)


def exact_halo(num_res_blocks: Sequence[int], lte_reduce_lv3: bool = False) -> int:
  """The halo, in LR pixels, that makes tiled inference equal to the whole-image run."""
  return math.ceil(receptive_radius(num_res_blocks, lte_reduce_lv3))


class AxisTile(NamedTuple):
  """One tile along an axis, in LR pixels: the window [start, start + length) that is run and the
  core [core_start, core_stop) of the image that it writes."""

  start: int
  length: int
  core_start: int
  core_stop: int


def axis_tiles(size: int, max_window: int, halo: int) -> list[AxisTile]:
  """The fewest equal windows of at most `max_window` pixels whose cores cover `size`.

  Every window has the same length (one compilation per image); a core lies at least `halo`
  pixels inside its window except on the image's borders.

  Raises:
    ValueError: `max_window` leaves no core inside a halo on each side.
  """
  if size <= max_window:
    return [AxisTile(0, size, 0, size)]
  if max_window <= 2 * halo:
    raise ValueError(f"a window of {max_window} pixels has no room inside a halo of {halo} on "
                     "each side")
  count = 2
  while True:
    core = -(-size // count)
    # Windows of the two end tiles need a halo on their inner side only.
    length = min(size, core + halo * min(2, count - 1))
    if length <= max_window:
      break
    count += 1
  bounds = [round(i * size / count) for i in range(count + 1)]
  return [AxisTile(min(max(lo - halo, 0), size - length), length, lo, hi)
          for lo, hi in zip(bounds, bounds[1:])]


def plan(lr_hw: tuple[int, int], max_window: int, halo: int) -> list[tuple[AxisTile, AxisTile]]:
  """(row tile, column tile) of each tile of an LR image, row-major."""
  rows = axis_tiles(lr_hw[0], max_window, halo)
  cols = axis_tiles(lr_hw[1], max_window, halo)
  return [(r, c) for r in rows for c in cols]
