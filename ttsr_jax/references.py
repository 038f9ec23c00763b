"""Reference images for a prediction: several stitched into one, or the most relevant few of a
pool of candidate photos.

Relevance is cheap on purpose: each image is described by the per-channel mean and standard
deviation of its VGG19 relu3_1 features on a `RELEVANCE_SIZE`-pixel square thumbnail
(`ttsr_jax.similarity`), computed with the model's own LTE, the network whose relu3_1 features
the texture search compares; the score of a candidate is the cosine of its descriptor and the LR
image's. It ranks a pool in one small batched program per 8 photos, without running the search
against every candidate.
"""

import functools
import os
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from data_pipeline import files
from data_pipeline import pairs
from data_pipeline import samples
from data_pipeline.samples import SCALE
from ttsr_jax import similarity
from ttsr_jax import predict

# Side of the square thumbnail each image is described on.
RELEVANCE_SIZE = 128


def stitch(refs: Sequence[np.ndarray]) -> np.ndarray:
  """One reference image from one or several uint8 images.

  Several references are combined as in the paper's multi-reference protocol
  (`samples.stitch_references`): stacked vertically, each at the top-left of a black square tile,
  the CUFED5 protocol's 500 pixels or the longest side (rounded up to a multiple of 4) if larger,
  so no reference is cropped.
  """
  if len(refs) == 1:
    return refs[0]
  longest = max(max(r.shape[:2]) for r in refs)
  tile = max(samples.MULTI_REFERENCE_TILE, -(-longest // SCALE) * SCALE)
  return samples.stitch_references(list(refs), tile)


def texture_params(params: dict) -> dict:
  """The VGG19 layers (up to relu3_1) of a generator's LTE, as `similarity` takes them."""
  return {name: layer for name, layer in params["LTE"].items() if name.startswith("features_")}


def describe(loaders: Sequence[Callable[[], np.ndarray]], params: dict) -> np.ndarray:
  """(N, 512) unit relevance descriptors of N uint8 images, each loaded when described.

  Args:
    loaders: functions returning the images (so a large pool is not held in memory at once).
    params: the generator's parameters (its LTE describes the images).
  """
  photos = [pairs.Photo(str(i), 0, 0, str(i), load) for i, load in enumerate(loaders)]
  return similarity.descriptors(photos, texture_params(params), RELEVANCE_SIZE)


def describe_files(paths: Sequence[os.PathLike], params: dict) -> np.ndarray:
  """`describe` of image files, each read (and checked to be a usable reference) when described.

  Raises:
    files.DatasetError: a file is unreadable or smaller than a reference may be.
  """
  loaders = [functools.partial(files.read_rgb, p, min_size=predict.MIN_REF_SIDE) for p in paths]
  return describe(loaders, params)


class Ranking(NamedTuple):
  """Candidates by relevance: `order` holds candidate indices, most relevant first, and `scores`
  their cosine scores in that order."""

  order: np.ndarray
  scores: np.ndarray


def rank(lr: np.ndarray, pool: np.ndarray, params: dict) -> Ranking:
  """The candidates of a pool by relevance to an LR image.

  Args:
    lr: the uint8 LR image.
    pool: `describe` of the candidates.
    params: the generator's parameters.
  """
  scores = pool @ describe([lambda: lr], params)[0]
  # Stable, so equal scores keep the pool's order.
  order = np.argsort(-scores, kind="stable")
  return Ranking(order, scores[order])


def pick(lr: np.ndarray, pool: np.ndarray, params: dict, count: int) -> list[tuple[int, float]]:
  """(candidate index, cosine score) of the `count` candidates of a pool most relevant to an LR
  image (`rank`), most relevant first."""
  ranking = rank(lr, pool, params)
  return list(zip(ranking.order[:count].tolist(), ranking.scores[:count].tolist()))
