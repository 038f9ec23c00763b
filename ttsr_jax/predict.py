"""Prediction with a trained TTSR: model inputs from uint8 images, the jitted forward passes,
tiled super-resolution of any size with the reference's features computed once, uint8 output and
captioned image panels. Used by the inference command (`ttsr_jax.infer`), the evaluation and the
report.

The reference test mode's inputs (what `prepare_inputs` makes): `lr` as given, `lrsr` its x4
Pillow bicubic, `ref` cropped at the top-left to multiples of 4 and `refsr` its x1/4-then-x4
bicubic; all mapped to [-1, 1] as `u8 / 127.5 - 1`; the output saved as round((sr + 1) * 127.5).
"""

import functools
import time
from typing import Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from data_pipeline import samples
from data_pipeline.samples import SCALE
from ttsr_jax import tiling
from ttsr_jax.models.search_transfer import reference_keys
from ttsr_jax.models.ttsr import ReferenceFeatures, TTSR

# The search compares 3x3 patches of lv3 features (1/4 of lrsr, i.e. the LR grid, and 1/4 of the
# reference): each image must hold one such patch.
MIN_LR_SIDE = 3
MIN_REF_SIDE = 3 * SCALE
# A sanity cap on output and reference pixels (8K UHD). Tiling bounds the LR side's memory; the
# reference is not tiled, so its features grow with its area (docs/inference.md has the figures).
DEFAULT_MAX_PIXELS = 7680 * 4320
# LR positions per relevance block (docs/benchmarks.md compares block sizes).
DEFAULT_SEARCH_CHUNK_SIZE = 1024
# Largest tile window (halo included), in output pixels per side, when tiling is on.
DEFAULT_TILE = 768
# Default halo, in LR pixels: measured (docs/inference.md) to keep tiled outputs within one grey
# level of the whole-image run; `tiling.exact_halo` gives the halo that makes them identical.
DEFAULT_HALO = 16
# Reference positions whose search keys are made at a time: the unfolded 3x3 patches of a block
# (9 x 256 floats per position with the paper's lv3 channels) stay a small share of the memory.
KEY_BLOCK_POSITIONS = 8192
# Reference rows, in lv3 positions (4 reference pixels), per band of the LTE when the search needs
# no unfolded keys, and the rows of context on each side: relu3_1 (with Exp1-3's extra conv) sees
# 14 reference pixels beyond a position, so the band's rows are the whole image's.
REFERENCE_BAND_ROWS = 64
REFERENCE_BAND_HALO = 4
_BAND_SCALES = (1, 4, 2, 1)  # rows per lv3 row of each of ReferenceFeatures' arrays
PANEL_GAP = 8  # white pixels between panels
CAPTION_HEIGHT = 14  # white strip above each panel with its caption

Params = dict
Progress = Callable[[int, int], None]


class Prediction(NamedTuple):
  """A super-resolved image and how it was made.

  sr: uint8 (4H, 4W, 3). s: float32 (H, W), the soft-attention confidence of each LR position.
  index: int32 (H, W), the position in the reference's lv3 grid (row-major, `grid_hw`) that each
  LR position took its texture from. grid_hw: (Hr // 4, Wr // 4) of the (cropped) reference.
  """

  sr: np.ndarray
  s: np.ndarray
  index: np.ndarray
  grid_hw: tuple[int, int]


def prepare_lr(lr: np.ndarray) -> dict[str, np.ndarray]:
  """{'lr': lr, 'lrsr': its x4 Pillow bicubic}, uint8."""
  height, width = lr.shape[:2]
  return {"lr": lr, "lrsr": samples.resize_bicubic(lr, SCALE * height, SCALE * width)}


def prepare_reference(ref: np.ndarray) -> dict[str, np.ndarray]:
  """{'ref': ref cropped to multiples of 4, 'refsr': its x1/4-then-x4 bicubic}, uint8."""
  ref = samples.crop_to_multiple(ref)
  return {"ref": ref, "refsr": samples.down_up(ref)[1]}


def prepare_inputs(lr: np.ndarray, ref: np.ndarray) -> dict[str, np.ndarray]:
  """The reference test mode's four uint8 model inputs from uint8 RGB images."""
  return {**prepare_lr(lr), **prepare_reference(ref)}


class SizeError(ValueError):
  """An image above the `max_pixels` sanity cap."""


def check_sizes(lr_shape: Sequence[int], ref_shape: Sequence[int], max_pixels: int) -> None:
  """Raises SizeError when the output of an LR image or its (stitched) reference exceeds
  `max_pixels` (the --max_pixels flag of the commands)."""
  height, width = lr_shape[:2]
  out_pixels = SCALE * height * SCALE * width
  if out_pixels > max_pixels:
    raise SizeError(f"LR of {width} x {height} gives a {SCALE * width} x {SCALE * height} "
                    f"output ({out_pixels:,} pixels), above --max_pixels {max_pixels:,}; "
                    "raise --max_pixels if this size is intended")
  ref_height, ref_width = ref_shape[:2]
  if ref_height * ref_width > max_pixels:
    raise SizeError(f"its reference is {ref_width} x {ref_height} "
                    f"({ref_height * ref_width:,} pixels), above --max_pixels {max_pixels:,}; "
                    "raise --max_pixels if this size is intended (the reference is not tiled: "
                    "its memory grows with its size)")


def to_uint8(sr: np.ndarray) -> np.ndarray:
  """The reference's saved image: round((sr + 1) * 127.5) in float32, half to even, as uint8."""
  return np.round((np.asarray(sr, np.float32) + np.float32(1)) * np.float32(127.5)).astype(np.uint8)


# Parameters are arguments of the jitted functions, not constants baked into the program (which
# XLA would fold slowly); each is compiled once per model and input shape.

# XLA:CPU hands reductions to YNNPACK by default, which holds extra copies of large reduction
# inputs (here the unfolded 3x3 patches the search normalises). Without them (dots and
# convolutions stay on YNNPACK) the reference's features and each tile peak lower and run no
# slower (docs/benchmarks.md). Only the tiled inference programs use this; training and
# evaluation keep XLA's defaults, and so their figures.
_LEAN_CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ",".join(
    f"LIBRARY_FUSION_TYPE_{kind}" for kind in ("INDIVIDUAL_DOT", "INDIVIDUAL_CONVOLUTION"))}


def _jit_lean(fn: Callable, **jit_kwargs) -> Callable:
  options = _LEAN_CPU_OPTIONS if jax.default_backend() == "cpu" else None
  return jax.jit(fn, compiler_options=options, **jit_kwargs)


@functools.cache
def sr_function(model: TTSR):
  """jit of (params, lr, lrsr, ref, refsr) -> sr on normalised NHWC batches."""
  return jax.jit(lambda params, *images: model.apply({"params": params}, *images).sr)


def _banded(reference_features: Callable) -> Callable:
  """`reference_features` (params, ref, refsr) -> ReferenceFeatures, not jitted, computed in bands
  of reference rows, each with REFERENCE_BAND_HALO lv3 rows of context, written straight into the
  whole arrays: only one band's LTE activations exist at a time. Bands of equal size (one
  compilation); the last starts early enough to end at the last row."""

  def band(params, ref, refsr, offset):
    rows = REFERENCE_BAND_ROWS
    return tuple(jax.lax.dynamic_slice_in_dim(x, offset * scale, rows * scale, axis=1)
                 for x, scale in zip(reference_features(params, ref, refsr), _BAND_SCALES))

  band, whole_image = _jit_lean(band), _jit_lean(reference_features)
  place = _jit_lean(lambda whole, part, start: tuple(
      jax.lax.dynamic_update_slice_in_dim(w, p, start * scale, axis=1)
      for w, p, scale in zip(whole, part, _BAND_SCALES)), donate_argnums=0)

  def features(params, ref, refsr):
    height = ref.shape[1] // SCALE
    window = REFERENCE_BAND_ROWS + 2 * REFERENCE_BAND_HALO
    if height <= window:
      return whole_image(params, ref, refsr)
    parts = jax.eval_shape(reference_features, params, ref[:, :SCALE * window],
                           refsr[:, :SCALE * window])
    whole = tuple(jnp.zeros((x.shape[0], height * scale, *x.shape[2:]), x.dtype)
                  for x, scale in zip(parts, _BAND_SCALES))
    for start in range(0, height, REFERENCE_BAND_ROWS):
      start = min(start, height - REFERENCE_BAND_ROWS)
      first = min(max(start - REFERENCE_BAND_HALO, 0), height - window)
      rows = slice(SCALE * first, SCALE * (first + window))
      whole = place(whole, band(params, ref[:, rows], refsr[:, rows], start - first), start)
    return ReferenceFeatures(*whole)

  return features


@functools.cache
def reference_function(model: TTSR):
  """(params, ref, refsr) -> ReferenceFeatures on normalised NHWC batches, as `TTSR.
  reference_features` computes them.

  `exact` search: in two programs: the LTE's activations are freed before the search keys (9 lv3
  vectors per position, the largest part) are made, and those are made in blocks of rows
  (`reference_keys`), so little more than the keys themselves is held. Other modes need no keys
  besides refsr's lv3 features, nor ref's lv1 map, and compute the LTE in bands of rows
  (`_banded`), so little more than the features themselves is held however large the
  reference."""
  if model.search_mode != "exact":
    return _banded(lambda params, ref, refsr: model.apply(
        {"params": params}, ref, refsr, method=TTSR.reference_features))
  textures = _jit_lean(lambda params, ref, refsr: model.apply(
      {"params": params}, ref, refsr, method=TTSR.reference_textures))
  keys = _jit_lean(reference_keys, static_argnums=1)

  def features(params: Params, ref: jax.Array, refsr: jax.Array) -> ReferenceFeatures:
    refsr_lv3, ref_levels = textures(params, ref, refsr)
    rows_per_block = max(1, KEY_BLOCK_POSITIONS // refsr_lv3.shape[2])
    return ReferenceFeatures(keys(refsr_lv3, rows_per_block), *ref_levels)

  return features


@functools.cache
def tile_function(model: TTSR):
  """jit of (params, lr, lrsr, ReferenceFeatures) -> (sr, S, index) on normalised NHWC batches."""

  def forward(params, lr, lrsr, reference):
    out = model.apply({"params": params}, lr, lrsr, reference, method=TTSR.with_reference)
    return out.sr, out.S, out.index

  return _jit_lean(forward)


def reference_features(model: TTSR, params: Params, ref: np.ndarray) -> ReferenceFeatures:
  """The reference's features for `model`, from a uint8 reference image (before cropping)."""
  images = prepare_reference(ref)
  return reference_function(model)(params, *(samples.normalize(images[k])[None]
                                             for k in ("ref", "refsr")))


def tile_plan(lr_hw: tuple[int, int], tile: int, halo: int) -> list:
  """`tiling.plan` for a tile side in output pixels (0: one tile, the whole image)."""
  if tile <= 0:
    return tiling.plan(lr_hw, max(lr_hw), halo)
  return tiling.plan(lr_hw, tile // SCALE, halo)


def super_resolve(model: TTSR, params: Params, images: dict[str, np.ndarray], *,
                  reference: Optional[ReferenceFeatures] = None, tile: int = DEFAULT_TILE,
                  halo: int = DEFAULT_HALO, progress: Optional[Progress] = None) -> Prediction:
  """Super-resolves `prepare_inputs` images, in tiles when the output is larger than `tile`.

  Args:
    model, params: the generator.
    images: uint8 'lr' and 'lrsr' (and 'ref' when `reference` is not given).
    reference: `reference_features` of the reference, to reuse them across images.
    tile: the largest tile window side (halo included) in output pixels; 0 = never tile.
    halo: LR pixels of context around each tile's core; `tiling.exact_halo` makes the result
      identical to the whole-image run.
    progress: called with (tiles done, tiles) after each tile of a multi-tile run.

  Raises:
    ValueError: the tile leaves no core inside its halo.
  """
  if reference is None:
    reference = reference_features(model, params, images["ref"])
  lr, lrsr = images["lr"], images["lrsr"]
  height, width = lr.shape[:2]
  tiles = tile_plan((height, width), tile, halo)
  forward = tile_function(model)
  sr = np.empty((SCALE * height, SCALE * width, 3), np.uint8)
  s = np.empty((height, width), np.float32)
  index = np.empty((height, width), np.int32)
  for done, (rows, cols) in enumerate(tiles, 1):
    window = (slice(rows.start, rows.start + rows.length),
              slice(cols.start, cols.start + cols.length))
    window4 = tuple(slice(SCALE * w.start, SCALE * w.stop) for w in window)
    tile_sr, tile_s, tile_index = forward(params, samples.normalize(lr[window])[None],
                                          samples.normalize(lrsr[window4])[None], reference)
    # The core, in window coordinates.
    r0, r1 = rows.core_start - rows.start, rows.core_stop - rows.start
    c0, c1 = cols.core_start - cols.start, cols.core_stop - cols.start
    core = (slice(rows.core_start, rows.core_stop), slice(cols.core_start, cols.core_stop))
    core4 = tuple(slice(SCALE * c.start, SCALE * c.stop) for c in core)
    sr[core4] = to_uint8(np.asarray(tile_sr[0, SCALE * r0:SCALE * r1, SCALE * c0:SCALE * c1]))
    s[core] = np.asarray(tile_s[0, r0:r1, c0:c1, 0])
    index[core] = np.asarray(tile_index[0]).reshape(rows.length, cols.length)[r0:r1, c0:c1]
    if progress is not None and len(tiles) > 1:
      progress(done, len(tiles))
  grid_hw = tuple(reference.keys.shape[1:3])
  return Prediction(sr, s, index, grid_hw)


class ProgressBar:
  """`[#####.....] 3/8 tiles, 12.3 s elapsed, ETA 20.5 s` on one line of a terminal stream."""

  def __init__(self, stream, width: int = 30):
    self._stream, self._width = stream, width
    self._start = time.perf_counter()

  def __call__(self, done: int, total: int) -> None:
    elapsed = time.perf_counter() - self._start
    eta = elapsed / done * (total - done)
    filled = self._width * done // total
    bar = "#" * filled + "." * (self._width - filled)
    end = "\n" if done == total else ""
    self._stream.write(f"\r[{bar}] {done}/{total} tiles, {elapsed:.1f} s elapsed, "
                       f"ETA {eta:.1f} s{end}")
    self._stream.flush()


def _caption(text: str, width: int) -> np.ndarray:
  strip = Image.new("RGB", (width, CAPTION_HEIGHT), (255, 255, 255))
  ImageDraw.Draw(strip).text((2, 1), text, fill=(0, 0, 0), font=ImageFont.load_default())
  return np.asarray(strip)


def panels(captioned: Sequence[tuple[str, np.ndarray]], height: Optional[int] = None
           ) -> np.ndarray:
  """Captioned uint8 images side by side, separated by white gaps.

  Each image is bicubic-resized to `height` (default: the first image's) keeping its aspect
  ratio, if it is not that tall already; its caption is written in a white strip above it
  (`CAPTION_HEIGHT` rows, clipped to the image's width).
  """
  height = captioned[0][1].shape[0] if height is None else height
  columns = []
  for text, image in captioned:
    if image.shape[0] != height:
      image = samples.resize_bicubic(
          image, height, max(1, round(image.shape[1] * height / image.shape[0])))
    if columns:
      columns.append(np.full((CAPTION_HEIGHT + height, PANEL_GAP, 3), 255, np.uint8))
    columns.append(np.concatenate([_caption(text, image.shape[1]), image], axis=0))
  return np.concatenate(columns, axis=1)
