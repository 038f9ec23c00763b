"""Reference-SR test sets besides CUFED5, read straight from their published layouts (batch 1).

Layouts under one test root (docs/data.md, "Test sets", says where each comes from):

  TEST_DIR/Sun80/Sun_Hays_SR_groundtruth/NAME.jpg            the 80 test images
  TEST_DIR/Sun80/Sun_Hays_SR_scenematches/NAME.jpg/*.jpg     their web-retrieved references
  TEST_DIR/Urban100/[HR/]*                                    100 images, no references
  TEST_DIR/Manga109/[HR/]*                                    109 images, no references
  TEST_DIR/WR-SR/input/NNN.png + TEST_DIR/WR-SR/ref/NNN_ref.png   80 pairs

Each set becomes a list of `Pair`s (test image, reference file or the LR image itself), chosen
once as the protocol says, then `batches` reads them one at a time into the model's inputs the
way the reference's CUFED5 `TestSet` does. Every layout problem is a one-line `DatasetError`
naming the path.
"""

import dataclasses
import pathlib
from collections.abc import Iterator, Sequence

import numpy as np

from data_pipeline import files
from data_pipeline import samples

Batch = dict[str, np.ndarray]
PathLike = str | pathlib.Path

SUN80_DIR, URBAN100_DIR, MANGA109_DIR, WRSR_DIR = "Sun80", "Urban100", "Manga109", "WR-SR"
SUN80_IMAGES, SUN80_REFERENCES = "Sun_Hays_SR_groundtruth", "Sun_Hays_SR_scenematches"
SUN80_CHOICES = ("random", "first")  # one random web reference per image, or the first by name
MANGA109_CHOICES = ("random_hr", "lr")  # another HR image of the set, or the LR input itself
SIZE_CHOICES = ("crop", "pad")  # sides that are not multiples of 4: crop or edge-pad


@dataclasses.dataclass(frozen=True)
class Pair:
  """One test image and what serves as its reference (None: the image's own LR)."""
  name: str
  hr: pathlib.Path
  ref: pathlib.Path | None


def make_batch(hr: np.ndarray, ref: np.ndarray) -> Batch:
  """The reference `TestSet` item (`samples.make_test_sample`) normalised, as a batch of one."""
  return {key: samples.normalize(image)[None]
          for key, image in samples.make_test_sample(hr, ref).items()}


def _pad_to_multiple(image: np.ndarray) -> np.ndarray:
  """Repeats the last rows and columns until both sides are multiples of 4."""
  height, width = image.shape[:2]
  return np.pad(image, ((0, -height % samples.SCALE), (0, -width % samples.SCALE), (0, 0)),
                mode="edge")


def read_pair(pair: Pair, sizes: str = "crop") -> Batch:
  """The model inputs and target of one pair.

  Args:
    pair: the files.
    sizes: 'crop' cuts sides that are not multiples of 4 at the bottom and right (the reference's
      test path, so `hr` is the cropped image); 'pad' repeats the edge pixels up to the next
      multiple of 4 for the inputs and keeps the whole image as `hr`, so `lrsr` and the output
      are larger than `hr` and must be cropped to it before scoring.

  Returns:
    `samples.IMAGE_KEYS` as float32 NHWC batches of one in [-1, 1].
  """
  if sizes not in SIZE_CHOICES:
    raise ValueError(f"sizes {sizes!r}: expected one of {SIZE_CHOICES}")
  original = files.read_rgb(pair.hr, min_size=samples.SCALE)
  hr = _pad_to_multiple(original) if sizes == "pad" else samples.crop_to_multiple(original)
  ref = (samples.down_up(hr)[0] if pair.ref is None
         else files.read_rgb(pair.ref, min_size=samples.SCALE))
  batch = make_batch(hr, ref)
  if sizes == "pad":
    batch["hr"] = samples.normalize(original)[None]
  return batch


def batches(pairs: Sequence[Pair], sizes: str = "crop") -> Iterator[tuple[str, Batch]]:
  """Yields (name, `read_pair` batch) for each pair, reading the files as it goes."""
  return ((pair.name, read_pair(pair, sizes)) for pair in pairs)


def _image_dir(root: pathlib.Path) -> pathlib.Path:
  """ROOT/HR when it exists (the benchmark packs' layout), else ROOT itself."""
  return root / "HR" if (root / "HR").is_dir() else root


def _rng(seed: int, salt: str) -> np.random.Generator:
  """A generator for one set's reference draws: the same for a seed whatever else is drawn."""
  return np.random.default_rng([seed, *salt.encode()])


def sun80_pairs(test_dir: PathLike, reference: str = "random", seed: int = 0) -> list[Pair]:
  """Sun80's test images, each with one of its web-retrieved references.

  Args:
    test_dir: the test root holding Sun80/.
    reference: 'random' (one reference drawn per image, as the TTSR authors evaluated) or
      'first' (the first by file name).
    seed: seeds the 'random' draws (a fixed seed gives the same references every run).
  """
  if reference not in SUN80_CHOICES:
    raise ValueError(f"Sun80 reference {reference!r}: expected one of {SUN80_CHOICES}")
  root = pathlib.Path(test_dir) / SUN80_DIR
  images = files.list_images(root / SUN80_IMAGES)
  rng = _rng(seed, SUN80_DIR)
  pairs = []
  for image in images:
    # The published folders are named after the whole file name (NAME.jpg/); NAME/ is accepted.
    folder = root / SUN80_REFERENCES / image.name
    if not folder.is_dir() and (root / SUN80_REFERENCES / image.stem).is_dir():
      folder = root / SUN80_REFERENCES / image.stem
    if not folder.is_dir():
      raise files.MissingDataError(
          f"{folder}: reference folder missing, expected the web references of "
          f"{SUN80_IMAGES}/{image.name}")
    refs = files.list_images(folder)
    choice = int(rng.integers(len(refs))) if reference == "random" else 0
    pairs.append(Pair(image.stem, image, refs[choice]))
  return pairs


def urban100_pairs(test_dir: PathLike) -> list[Pair]:
  """Urban100's images, each with its own LR image as the reference (SRNTT's and TTSR's setting:
  the buildings' self-similarity is what the search can find)."""
  return [Pair(image.stem, image, None)
          for image in files.list_images(_image_dir(pathlib.Path(test_dir) / URBAN100_DIR))]


def manga109_pairs(test_dir: PathLike, reference: str = "random_hr", seed: int = 0) -> list[Pair]:
  """Manga109's images with a reference as the protocol says.

  Args:
    test_dir: the test root holding Manga109/.
    reference: 'random_hr' (another HR image of the set, drawn per image; the TTSR paper, Sec. 4.1)
      or 'lr' (the image's own LR, as for Urban100).
    seed: seeds the 'random_hr' draws.
  """
  if reference not in MANGA109_CHOICES:
    raise ValueError(f"Manga109 reference {reference!r}: expected one of {MANGA109_CHOICES}")
  images = files.list_images(_image_dir(pathlib.Path(test_dir) / MANGA109_DIR))
  if reference == "lr":
    return [Pair(image.stem, image, None) for image in images]
  if len(images) < 2:
    raise files.DatasetError(f"{images[0].parent}: one image, expected at least 2 to draw "
                             "another image of the set as the reference")
  rng = _rng(seed, MANGA109_DIR)
  pairs = []
  for i, image in enumerate(images):
    other = int(rng.integers(len(images) - 1))
    pairs.append(Pair(image.stem, image, images[other + (other >= i)]))  # never the image itself
  return pairs


def wrsr_pairs(test_dir: PathLike) -> list[Pair]:
  """WR-SR's pairs: input/NNN.png with ref/NNN_ref.png (C2-Matching's datasets/WR-SR_pairs.txt)."""
  root = pathlib.Path(test_dir) / WRSR_DIR
  pairs = []
  for image in files.list_images(root / "input"):
    ref = root / "ref" / f"{image.stem}_ref{image.suffix}"
    if not ref.is_file():
      raise files.MissingDataError(f"{ref}: reference missing, expected the reference of "
                                   f"input/{image.name}")
    pairs.append(Pair(image.stem, image, ref))
  return pairs
