"""Finds the images of a CUFED-layout directory and reads them as 8-bit RGB.

Layout (the reference's `dataset/cufed.py`):

  DIR/train/input/*        training inputs (HR patches), paired with
  DIR/train/ref/*          training references by position after sorting both lists by name
  DIR/test/CUFED5/XXX_0.png          test HR image
  DIR/test/CUFED5/XXX_1..5.png       its references, similarity levels 1 (best) to 5

Every failure is a one-line `DatasetError` that names the path and what was expected.
"""

import dataclasses
import pathlib

import numpy as np
from PIL import Image

NUM_LEVELS = 5


class DatasetError(ValueError):
  """Input data that does not have the expected layout or content."""


class MissingDataError(DatasetError, FileNotFoundError):
  """A file or directory that should exist (and hold images) does not."""


def _one_line(text: str) -> str:
  return " ".join(str(text).split())


def read_rgb(path: str | pathlib.Path, min_size: int = 1) -> np.ndarray:
  """Reads an image file as uint8 (H, W, 3).

  Grayscale, palette, CMYK and alpha images are converted with Pillow (alpha is dropped); 16-bit
  images keep their high byte, as Pillow does itself for 16-bit RGB PNGs.

  Args:
    path: the image file.
    min_size: the smallest height and width accepted.

  Returns:
    The pixels, uint8, HWC.

  Raises:
    MissingDataError: the file does not exist.
    DatasetError: the file is not a readable image, is truncated, or is too small.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise MissingDataError(f"{path}: image file not found")
  try:
    with Image.open(path) as image:
      # Decoding happens lazily; load() makes truncated files fail here rather than later.
      image.load()
      if image.mode.startswith("I"):
        # convert("RGB") would clip 16-bit values to 255 instead of rescaling them.
        high_byte = (np.clip(np.asarray(image, np.int64), 0, 65535) >> 8).astype(np.uint8)
        pixels = np.repeat(high_byte[..., None], 3, axis=-1)
      else:
        pixels = np.asarray(image.convert("RGB"))
  except (OSError, SyntaxError, ValueError) as error:
    raise DatasetError(
        f"{path}: unreadable or truncated image, expected a complete image file "
        f"({_one_line(error)})") from None
  height, width = pixels.shape[:2]
  if height < min_size or width < min_size:
    raise DatasetError(
        f"{path}: image is {width} x {height}, expected at least {min_size} x {min_size}")
  return pixels


def list_images(directory: str | pathlib.Path) -> list[pathlib.Path]:
  """Lists the non-hidden files of `directory`, sorted by name (as the reference sorts them)."""
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    raise MissingDataError(f"{directory}: directory not found, expected a directory of images")
  paths = sorted((p for p in directory.iterdir() if p.is_file() and not p.name.startswith(".")),
                 key=lambda p: p.name)
  if not paths:
    raise MissingDataError(f"{directory}: directory is empty, expected at least one image")
  return paths


def train_pairs(cufed_dir: str | pathlib.Path) -> list[tuple[pathlib.Path, pathlib.Path]]:
  """Returns the (input, reference) training pairs of a CUFED directory, in index order."""
  root = pathlib.Path(cufed_dir)
  input_dir, ref_dir = root / "train" / "input", root / "train" / "ref"
  inputs, refs = list_images(input_dir), list_images(ref_dir)
  if len(inputs) != len(refs):
    # CUFED names a pair identically on both sides, so the first position where the names part
    # is where a file is missing.
    first = next((i for i, (a, b) in enumerate(zip(inputs, refs)) if a.stem != b.stem),
                 min(len(inputs), len(refs)))
    unmatched_input = inputs[first].name if first < len(inputs) else "none"
    unmatched_ref = refs[first].name if first < len(refs) else "none"
    raise DatasetError(
        f"{root / 'train'}: {len(inputs)} files in input/ but {len(refs)} in ref/, expected one "
        f"reference per input; first unmatched: input/{unmatched_input} vs ref/{unmatched_ref}")
  return list(zip(inputs, refs))


@dataclasses.dataclass(frozen=True)
class Cufed5Group:
  """One CUFED5 test image and its references, levels 1 to 5."""
  name: str
  hr: pathlib.Path
  refs: tuple[pathlib.Path, ...]


def cufed5_groups(cufed_dir: str | pathlib.Path) -> list[Cufed5Group]:
  """Returns the CUFED5 test groups of a CUFED directory, sorted by name."""
  directory = pathlib.Path(cufed_dir) / "test" / "CUFED5"
  if not directory.is_dir():
    raise MissingDataError(f"{directory}: directory not found, expected XXX_0.png .. XXX_5.png")
  hrs = sorted(directory.glob("*_0.png"))
  if not hrs:
    raise MissingDataError(f"{directory}: no *_0.png files, expected XXX_0.png .. XXX_5.png")
  groups = []
  for hr in hrs:
    name = hr.name[:-len("_0.png")]
    refs = tuple(directory / f"{name}_{level}.png" for level in range(1, NUM_LEVELS + 1))
    missing = [ref.name for ref in refs if not ref.is_file()]
    if missing:
      raise MissingDataError(
          f"{directory / missing[0]}: reference missing, expected levels 1-{NUM_LEVELS} beside "
          f"{hr.name} (missing: {', '.join(missing)})")
    groups.append(Cufed5Group(name, hr, refs))
  return groups
