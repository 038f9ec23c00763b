"""TFDS builder `cufed`: the CUFED training pairs, resized once with Pillow and stored as PNG.

Preparing does all the Pillow work of the reference's `TrainSet`, so training only decodes,
augments and batches. Each example holds uint8 `lr`, `lrsr`, `hr`, `ref`, `refsr` (the reference
and its down-up pasted at the top-left of a black patch-sized canvas), the reference's size before
padding, the pair's index in sorted-name order and the input's file name.
"""

import dataclasses
import logging
import os
import pathlib
import sys
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds
import tqdm

from data_pipeline import files
from data_pipeline import samples


class _QuietTfds(logging.Filter):
  """Drops TFDS's INFO and WARNING records. For this local builder they describe TFDS's
  machinery, not the data ('Using custom data configuration' for every patch size but 160,
  'Variant folder ... has no dataset_info.json' before a first preparation, each file read);
  its errors pass."""

  def filter(self, record: logging.LogRecord) -> bool:
    return (record.levelno >= logging.ERROR
            or f"{os.sep}tensorflow_datasets{os.sep}" not in record.pathname)


# TFDS logs through absl, whose records all go to the 'absl' logger.
logging.getLogger("absl").addFilter(_QuietTfds())


def _png(size: int) -> tfds.features.Image:
  return tfds.features.Image(shape=(size, size, 3), encoding_format="png")


@dataclasses.dataclass(eq=False)
class CufedConfig(tfds.core.BuilderConfig):
  """A patch size; the stored shapes depend on it."""
  patch_size: int = samples.DEFAULT_PATCH_SIZE


class Cufed(tfds.core.GeneratorBasedBuilder):
  """CUFED training pairs (input, reference) prepared as the reference's `TrainSet` items."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [CufedConfig(name=f"patch{samples.DEFAULT_PATCH_SIZE}",
                                 patch_size=samples.DEFAULT_PATCH_SIZE)]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Point the manual directory at a CUFED root holding train/input/* and train/ref/* "
      "(or make one with `python -m data_pipeline.make_demo --out DIR`).")

  def _info(self) -> tfds.core.DatasetInfo:
    patch = self.builder_config.patch_size
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "lr": _png(patch // samples.SCALE),
            "lrsr": _png(patch),
            "hr": _png(patch),
            "ref": _png(patch),
            "refsr": _png(patch),
            "ref_size": tfds.features.Tensor(shape=(2,), dtype=np.int32),
            "index": np.int64,
            "name": tfds.features.Text(),
        }),
        homepage="https://github.com/researchmm/TTSR",
    )

  # TFDS prints 'Downloading and preparing dataset Unknown size' before preparing and a
  # 'downloaded' line after, though nothing is downloaded; the progress bar and `prepare`'s
  # caller say what happens instead.
  def _log_download_bytes(self) -> None:
    pass

  def _log_download_done(self) -> None:
    pass

  def _split_generators(self, dl_manager: tfds.download.DownloadManager
                        ) -> dict[str, Iterator[tuple[int, dict]]]:
    return {"train": self._generate_examples(files.train_pairs(dl_manager.manual_dir))}

  def _generate_examples(self, pairs: list[tuple[pathlib.Path, pathlib.Path]]
                         ) -> Iterator[tuple[int, dict]]:
    patch = self.builder_config.patch_size
    cropped = {"input": 0, "ref": 0}
    progress = tqdm.tqdm(pairs, desc=f"preparing {patch} x {patch} training pairs", unit="pair",
                         file=sys.stderr, dynamic_ncols=True)
    for index, (input_path, ref_path) in enumerate(progress):
      hr = files.read_rgb(input_path, min_size=patch)
      ref = files.read_rgb(ref_path, min_size=samples.SCALE)
      cropped["input"] += max(hr.shape[:2]) > patch
      cropped["ref"] += max(ref.shape[:2]) > patch
      example = samples.make_train_sample(
          samples.center_crop(hr, patch), samples.center_crop(ref, patch), patch)
      yield index, {**example, "index": index, "name": input_path.name}
    # A patch smaller than the stored pairs is a config's choice (configs/demo.py trains on
    # 32 x 32 crops of 160 x 160 pairs), and the few larger images of a collection need nothing
    # from the user either, so this is information, not a warning.
    for kind, count in cropped.items():
      if count:
        logging.info("%d of %d training %s images were larger than %dx%d and centre-cropped",
                     count, len(pairs), kind, patch, patch)


def builder(data_dir: str | pathlib.Path,
            patch_size: int = samples.DEFAULT_PATCH_SIZE) -> Cufed:
  """The `cufed` builder for one patch size, reading and writing under `data_dir`."""
  if patch_size <= 0 or patch_size % samples.SCALE:
    raise ValueError(f"patch_size {patch_size}: expected a positive multiple of {samples.SCALE}")
  name = f"patch{patch_size}"
  config = Cufed.builder_configs.get(name) or CufedConfig(
      name=name, patch_size=patch_size, version=Cufed.VERSION)
  return Cufed(config=config, data_dir=str(data_dir))


def default_data_dir(cufed_dir: str | pathlib.Path) -> pathlib.Path:
  """Where the prepared dataset goes unless told otherwise: beside the images."""
  return pathlib.Path(cufed_dir) / "tfds"


def prepare(cufed_dir: str | pathlib.Path, data_dir: str | pathlib.Path | None = None,
            patch_size: int = samples.DEFAULT_PATCH_SIZE) -> Cufed:
  """Prepares the `cufed` dataset from a CUFED directory (a no-op if already prepared).

  Args:
    cufed_dir: the CUFED root (holding train/input and train/ref).
    data_dir: the TFDS data directory; defaults to `default_data_dir(cufed_dir)`.
    patch_size: the training patch side (160 in CUFED).

  Returns:
    The prepared builder.

  Raises:
    DatasetError: the layout or an image is not as expected. The layout is checked before TFDS
      starts, whose own check of the manual directory would name no file.
  """
  files.train_pairs(cufed_dir)
  prepared = builder(data_dir or default_data_dir(cufed_dir), patch_size)
  tfds.display_progress_bar(False)  # its bars for splits and shuffling; ours counts the pairs
  prepared.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(cufed_dir)))
  return prepared
