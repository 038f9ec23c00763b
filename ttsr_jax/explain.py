"""Pictures of what the texture transformer did for one image (`--explain` of the inference).

* `confidence_image`: the soft attention S of every LR position (how well its best reference patch
  matched, a cosine similarity in [0, 1]) at the output size, colour-mapped (viridis) over S's
  own range in that image, from dark blue at its minimum to yellow at its maximum, with a scale
  bar labelled in S. S usually spans a small part of [0, 1] (0.9 to 1 is common), which on a
  fixed 0-1 scale would be one colour.
* `correspondence_image`: every output location coloured by the reference position its texture
  came from (the hard-attention index), beside the reference coloured the same way and the
  colour key. The colour of a reference position is a 2-D colour wheel over the reference:
  hue = direction from the reference's centre, saturation = distance from it (white at the
  centre).
"""

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from data_pipeline.samples import SCALE
from ttsr_jax import predict

# 256 viridis colours: S is shown as colour round(255 * (S - low) / (high - low)).
S_COLOURS = np.round(255 * matplotlib.colormaps["viridis"](np.linspace(0, 1, 256))[:, :3]
                     ).astype(np.uint8)
_BAR_WIDTH = 16
_LABEL_WIDTH = 40
_BLACK = (0, 0, 0)


def confidence_range(s: np.ndarray) -> tuple[float, float]:
  """The (lowest, highest) S of an image: the ends of its colour scale."""
  return float(np.min(s)), float(np.max(s))


def confidence_colours(s: np.ndarray, low: float, high: float) -> np.ndarray:
  """uint8 (H, W, 3) colours of S (H, W) on the scale from `low` (dark blue) to `high` (yellow):
  `S_COLOURS[round(255 * clip((S - low) / (high - low), 0, 1))]`; the middle colour when the
  scale is a single value."""
  fraction = (np.asarray(s, np.float64) - low) / (high - low) if high > low else np.full(
      np.shape(s), 0.5)
  return S_COLOURS[np.round(255 * np.clip(fraction, 0, 1)).astype(np.int64)]


def _scale_bar(height: int, low: float, high: float) -> np.ndarray:
  """A vertical viridis bar, `high` at the top and `low` at the bottom, labelled with S at the
  top, middle and bottom."""
  values = np.linspace(high, low, height)[:, None].repeat(_BAR_WIDTH, axis=1)
  bar = Image.new("RGB", (_BAR_WIDTH + _LABEL_WIDTH, height), (255, 255, 255))
  bar.paste(Image.fromarray(confidence_colours(values, low, high)), (0, 0))
  draw, font = ImageDraw.Draw(bar), ImageFont.load_default()
  for value, y in ((high, 0), ((low + high) / 2, height // 2 - 5), (low, height - 11)):
    draw.text((_BAR_WIDTH + 3, max(0, y)), f"{value:.3f}", fill=_BLACK, font=font)
  return np.asarray(bar)


def confidence_image(s: np.ndarray) -> np.ndarray:
  """S (H, W) as a captioned heatmap of the output's size (4H, 4W) over S's own range, with the
  scale bar on the right."""
  low, high = confidence_range(s)
  heat = confidence_colours(s, low, high).repeat(SCALE, axis=0).repeat(SCALE, axis=1)
  return predict.panels([(f"confidence S, {low:.3f} to {high:.3f}", heat),
                         ("S", _scale_bar(heat.shape[0], low, high))])


def wheel_colours(grid_hw: tuple[int, int]) -> np.ndarray:
  """uint8 (h, w, 3): the colour wheel's colour of each position of an h x w reference grid."""
  h, w = grid_hw
  y = (np.arange(h) + 0.5) / h * 2 - 1
  x = (np.arange(w) + 0.5) / w * 2 - 1
  yy, xx = np.meshgrid(y, x, indexing="ij")
  radius = np.hypot(xx, yy)
  hsv = np.stack([(np.arctan2(yy, xx) / (2 * np.pi)) % 1.0, radius / radius.max(),
                  np.ones_like(radius)], axis=-1)
  return np.round(255 * matplotlib.colors.hsv_to_rgb(hsv)).astype(np.uint8)


def correspondence_colours(index: np.ndarray, grid_hw: tuple[int, int]) -> np.ndarray:
  """uint8 (H, W, 3): the wheel colour of the reference position each LR position used."""
  return wheel_colours(grid_hw).reshape(-1, 3)[index]


def correspondence_image(index: np.ndarray, grid_hw: tuple[int, int],
                         ref: np.ndarray) -> np.ndarray:
  """Texture sources at the output size (4H, 4W) | the (cropped) reference, coloured alike |
  the colour key.

  The reference keeps its brightness (colour scaled by 0.35 + 0.65 * luminance) so its content
  stays recognisable; each lv3 grid position covers 4 x 4 reference pixels.
  """
  sources = correspondence_colours(index, grid_hw).repeat(SCALE, axis=0).repeat(SCALE, axis=1)
  h, w = grid_hw
  wheel = wheel_colours(grid_hw).repeat(SCALE, axis=0).repeat(SCALE, axis=1)
  luma = ref[:SCALE * h, :SCALE * w].astype(np.float32) @ np.float32([0.299, 0.587, 0.114]) / 255
  coloured = np.round(wheel * (0.35 + 0.65 * luma[..., None])).astype(np.uint8)
  return predict.panels([("texture source", sources), ("reference", coloured),
                         ("colour key", colour_key(wheel))])


def colour_key(wheel: np.ndarray) -> np.ndarray:
  """The colour wheel over the reference (`wheel`, uint8) with its sides named and its centre
  (white) marked with a +."""
  key = Image.fromarray(wheel)
  draw, font = ImageDraw.Draw(key), ImageFont.load_default()
  width, height = key.size
  for text, (x, y) in (("+", (width / 2, height / 2)), ("top", (width / 2, 6)),
                       ("bottom", (width / 2, height - 6)), ("left", (2, height / 2)),
                       ("right", (width - 2, height / 2))):
    anchor = {"left": "lm", "right": "rm"}.get(text, "mm")
    draw.text((x, y), text, fill=_BLACK, font=font, anchor=anchor)
  return np.asarray(key)
