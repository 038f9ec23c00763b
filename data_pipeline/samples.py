"""The reference's samples, made with NumPy and Pillow from uint8 RGB arrays (HWC).

A sample holds the model inputs `lr`, `lrsr`, `ref`, `refsr` and the target `hr`, named as in the
model. Resizes use Pillow's bicubic on uint8, exactly like `dataset/cufed.py`: nothing else
reproduces its per-pass rounding, so these functions are the only place images are resized.
"""

import numpy as np
from PIL import Image

from data_pipeline import files

SCALE = 4
DEFAULT_PATCH_SIZE = 160  # CUFED's training patches
MULTI_REFERENCE_TILE = 500  # CUFED5 references are at most 500 pixels on a side
MODEL_INPUT_KEYS = ("lr", "lrsr", "ref", "refsr")  # in the order TTSR takes them
IMAGE_KEYS = MODEL_INPUT_KEYS + ("hr",)  # a sample: the model inputs and the target

# The reference normalises with float32(u8) / 127.5 - 1; a table of the 256 results lets every
# consumer (NumPy here, the devices in `host_to_device`) produce exactly those bits whatever its
# arithmetic.
NORMALIZED = np.arange(256, dtype=np.float32) / np.float32(127.5) - np.float32(1)


def normalize(image: np.ndarray) -> np.ndarray:
  """Maps uint8 pixels to float32 in [-1, 1] as `u8 / 127.5 - 1`."""
  return NORMALIZED[image]


def resize_bicubic(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """Pillow bicubic resize of a uint8 (H, W, 3) image to (height, width), the width first.

  Pillow resizes in two one-dimensional passes and rounds to uint8 between them, so their order
  shows in the result. Up to Pillow 12 one `resize` call always ran the horizontal pass first;
  Pillow 13 runs the vertical one first when the height shrinks much more than the width
  (python-pillow/Pillow#9549). Two calls, one per axis, give the earlier order's bits on any
  Pillow (Pillow skips the pass of an unchanged side).
  """
  wide = Image.fromarray(image).resize((width, image.shape[0]), Image.Resampling.BICUBIC)
  return np.asarray(wide.resize((width, height), Image.Resampling.BICUBIC))


def down_up(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Returns (x1/4 image, that image resized back to the original size)."""
  height, width = image.shape[:2]
  low = resize_bicubic(image, height // SCALE, width // SCALE)
  return low, resize_bicubic(low, height, width)


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
  """Crops each side longer than `size` to its central `size` pixels."""
  height, width = image.shape[:2]
  top, left = max(height - size, 0) // 2, max(width - size, 0) // 2
  return image[top:top + size, left:left + size]


def crop_to_multiple(image: np.ndarray, multiple: int = SCALE) -> np.ndarray:
  """Crops at the top-left to sides that are multiples of `multiple` (as the CUFED5 test set)."""
  height, width = image.shape[:2]
  return image[:height // multiple * multiple, :width // multiple * multiple]


def make_train_sample(hr: np.ndarray, ref: np.ndarray,
                      patch_size: int = DEFAULT_PATCH_SIZE) -> dict[str, np.ndarray]:
  """The reference `TrainSet` item before normalisation and augmentation.

  Args:
    hr: the training input, uint8 (patch_size, patch_size, 3).
    ref: its reference, uint8 (h2, w2, 3) with 4 <= h2, w2 <= patch_size; sides need not be
      multiples of 4 (refsr is then resized back to (h2, w2), as the reference does).
    patch_size: side of the training patch and of the reference canvas.

  Returns:
    uint8 arrays `lr` (patch/4 square), `lrsr`, `hr`, `ref`, `refsr` (patch square; the reference
    pasted at the top-left of a 0 canvas, i.e. -1 after normalisation) and int32 `ref_size`
    (h2, w2).
  """
  if hr.shape != (patch_size, patch_size, 3):
    raise files.DatasetError(f"training input of shape {hr.shape}: expected "
                             f"({patch_size}, {patch_size}, 3)")
  ref_height, ref_width = ref.shape[:2]
  if ref_height > patch_size or ref_width > patch_size:
    raise files.DatasetError(f"training reference of {ref_height}x{ref_width}: expected at most "
                             f"{patch_size}x{patch_size}")
  lr, lrsr = down_up(hr)
  _, refsr = down_up(ref)
  canvases = np.zeros((2, patch_size, patch_size, 3), np.uint8)
  canvases[0, :ref_height, :ref_width] = ref
  canvases[1, :ref_height, :ref_width] = refsr
  return {"lr": lr, "lrsr": lrsr, "hr": hr, "ref": canvases[0], "refsr": canvases[1],
          "ref_size": np.array([ref_height, ref_width], np.int32)}


def make_test_sample(hr: np.ndarray, ref: np.ndarray) -> dict[str, np.ndarray]:
  """The reference CUFED5 `TestSet` item before normalisation (uint8, each at its own size).

  Both images are cropped at the top-left to sides that are multiples of 4; `lr` is the x1/4
  bicubic of `hr`, `lrsr` its x4 bicubic, `refsr` the down-up of `ref`.
  """
  hr, ref = crop_to_multiple(hr), crop_to_multiple(ref)
  lr, lrsr = down_up(hr)
  _, refsr = down_up(ref)
  return {"lr": lr, "lrsr": lrsr, "hr": hr, "ref": ref, "refsr": refsr}


def stitch_references(refs: list[np.ndarray],
                      tile: int = MULTI_REFERENCE_TILE) -> np.ndarray:
  """Stacks references vertically into one image, each on its own `tile` x `tile` black tile.

  Each reference sits at the top-left of its tile (cropped at the top-left if a side exceeds
  `tile`), as the training canvas does; black is -1 after normalisation.
  """
  canvas = np.zeros((len(refs) * tile, tile, 3), np.uint8)
  for i, ref in enumerate(refs):
    part = ref[:tile, :tile]
    canvas[i * tile:i * tile + part.shape[0], :part.shape[1]] = part
  return canvas
