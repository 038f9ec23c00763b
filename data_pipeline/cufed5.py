"""CUFED5 test samples, read straight from the PNGs (each has its own size, so batch 1).

Two protocols:
  * `level_samples(dir, level)`: the reference `TestSet` with the references of one similarity
    level (the reference's evaluation uses level 1 only);
  * `multi_reference_samples(dir)`: the paper's main CUFED5 protocol, the five references of an
    image stitched into one reference (see `samples.stitch_references` and docs/data.md).
"""

import pathlib
from collections.abc import Callable, Iterator

import numpy as np

from data_pipeline import files
from data_pipeline import samples
from data_pipeline import testsets

def _batches(cufed_dir: str | pathlib.Path,
             reference: Callable[[files.Cufed5Group], np.ndarray],
             ) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
  def batch(group: files.Cufed5Group) -> tuple[str, dict[str, np.ndarray]]:
    return group.name, testsets.make_batch(files.read_rgb(group.hr, min_size=samples.SCALE),
                                           reference(group))

  # Listing now rather than on the first next() makes layout errors surface at the call.
  return map(batch, files.cufed5_groups(cufed_dir))


def level_samples(cufed_dir: str | pathlib.Path,
                  level: int = 1) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
  """Yields (name, batch) for each CUFED5 image with its level-`level` reference.

  Args:
    cufed_dir: the CUFED root (holding test/CUFED5).
    level: the reference's similarity level, 1 (most similar) to 5.

  Yields:
    The group name (`XXX` of XXX_0.png) and a batch of one: `samples.IMAGE_KEYS` as float32 NHWC
    in [-1, 1], sides cropped at the top-left to multiples of 4 as the reference does.
  """
  if not 1 <= level <= files.NUM_LEVELS:
    raise ValueError(f"level {level}: expected 1 to {files.NUM_LEVELS}")
  return _batches(cufed_dir, lambda group: files.read_rgb(group.refs[level - 1],
                                                          min_size=samples.SCALE))


def multi_reference_samples(cufed_dir: str | pathlib.Path,
                            tile: int = samples.MULTI_REFERENCE_TILE,
                            ) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
  """Yields (name, batch) for each CUFED5 image with all five references in one image.

  The references are stacked vertically, each at the top-left of a black `tile` x `tile` tile
  (2500 x 500 for the default tile), and the stitched image is then treated as one reference
  (its `refsr` is the down-up of the whole stitched image).
  """
  if tile <= 0 or tile % samples.SCALE:
    raise ValueError(f"tile {tile}: expected a positive multiple of {samples.SCALE}")
  return _batches(cufed_dir, lambda group: samples.stitch_references(
      [files.read_rgb(ref, min_size=samples.SCALE) for ref in group.refs], tile))
