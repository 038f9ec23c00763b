"""Pictures of what the texture transformer did for one image (`--explain` of the inference).

* `confidence_image`: the soft attention S of every LR position (how well its best reference patch
  matched, a cosine similarity in [0, 1]) at the output size, colour-mapped (viridis: dark blue 0,
  yellow 1), with a scale bar.
* `correspondence_image`: every output location coloured by the reference position its texture
  came from (the hard-attention index), beside the reference coloured the same way. The colour
  of a reference position is a 2-D colour wheel over the reference: hue = direction from the
  reference's centre, saturation = distance from it (white at the centre).
"""

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ttsr_jax import predict

SCALE = predict.SCALE
# 256 viridis colours: S in [0, 1] is shown as colour round(255 * S).
S_COLOURS = np.round(255 * matplotlib.colormaps["viridis"](np.linspace(0, 1, 256))[:, :3]
                     ).astype(np.uint8)
_BAR_WIDTH = 16
_LABEL_WIDTH = 34


def confidence_colours(s: np.ndarray) -> np.ndarray:
  """uint8 (H, W, 3) colours of S (H, W): `S_COLOURS[round(255 * clip(S, 0, 1))]`."""
  return S_COLOURS[np.round(255 * np.clip(s, 0, 1)).astype(np.int64)]


def _scale_bar(height: int) -> np.ndarray:
  """A vertical viridis bar, 1 at the top and 0 at the bottom, labelled 0, 0.5 and 1."""
  values = np.linspace(1, 0, height)[:, None].repeat(_BAR_WIDTH, axis=1)
  bar = Image.new("RGB", (_BAR_WIDTH + _LABEL_WIDTH, height), (255, 255, 255))
  bar.paste(Image.fromarray(confidence_colours(values)), (0, 0))
  draw, font = ImageDraw.Draw(bar), ImageFont.load_default()
  for value, y in ((1.0, 0), (0.5, height // 2 - 5), (0.0, height - 11)):
    draw.text((_BAR_WIDTH + 3, max(0, y)), f"{value:g}", fill=(0, 0, 0), font=font)
  return np.asarray(bar)


def confidence_image(s: np.ndarray) -> np.ndarray:
  """S (H, W) as a captioned heatmap of the output's size (4H, 4W), scale bar on the right."""
  heat = confidence_colours(s).repeat(SCALE, axis=0).repeat(SCALE, axis=1)
  return predict.panels([("confidence S", heat), ("", _scale_bar(heat.shape[0]))])


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
  """Texture sources at the output size (4H, 4W) | the (cropped) reference, coloured alike.

  The reference keeps its brightness (colour scaled by 0.35 + 0.65 * luminance) so its content
  stays recognisable; each lv3 grid position covers 4 x 4 reference pixels.
  """
  sources = correspondence_colours(index, grid_hw).repeat(SCALE, axis=0).repeat(SCALE, axis=1)
  h, w = grid_hw
  wheel = wheel_colours(grid_hw).repeat(SCALE, axis=0).repeat(SCALE, axis=1)
  luma = ref[:SCALE * h, :SCALE * w].astype(np.float32) @ np.float32([0.299, 0.587, 0.114]) / 255
  coloured = np.round(wheel * (0.35 + 0.65 * luma[..., None])).astype(np.uint8)
  return predict.panels([("texture source", sources), ("reference", coloured)])
