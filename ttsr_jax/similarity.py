"""The most similar photo of a collection, by the LTE's VGG19 texture features.

TTSR matches textures with VGG19 relu3_1 features (the LTE's search level). A photo is described
here by the per-channel mean and standard deviation of its relu3_1 map (a texture statistic in
the manner of style features, insensitive to layout), computed on the photo resized to
size x size; two photos are as similar as the cosine of their descriptors. The weights are
ImageNet's (`python -m ttsr_jax.tools.vgg19`) when given; random ones still respond to colour and
local structure (tests/test_make_pairs.py checks that look-alike photos find each other).
"""

import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from data_pipeline import pairs
from data_pipeline import samples
from ttsr_jax.models.vgg import VGG19, conv_indices
from ttsr_jax import vgg19_weights

_LAYER = "relu3_1"
_BATCH = 8  # photos per call; the last batch is padded, so one shape is compiled


def vgg_params(weights: str | os.PathLike | None, seed: int = 0) -> dict:
  """VGG19 parameters up to relu3_1: from a converted weight file, or random from `seed`.

  Random kernels are He-normal (standard deviation sqrt(2 / fan-in)), which keeps the features'
  scale through the ReLUs, with zero biases; NumPy draws them, so nothing is compiled for it.
  """
  if weights is not None:
    params = vgg19_weights.load_vgg19_params(weights)
    return {f"features_{k}": params[f"features_{k}"] for k in conv_indices(_LAYER)}
  shapes = jax.eval_shape(VGG19(last=_LAYER).init, jax.random.PRNGKey(0),
                          jnp.zeros((1, 16, 16, 3)))["params"]
  rng = np.random.default_rng(seed)
  return {name: {"kernel": (rng.standard_normal(leaf["kernel"].shape)
                            * np.sqrt(2 / np.prod(leaf["kernel"].shape[:3]))).astype(np.float32),
                 "bias": np.zeros(leaf["bias"].shape, np.float32)}
          for name, leaf in sorted(shapes.items(), key=lambda item: int(item[0].split("_")[1]))}


@jax.jit
def _statistics(params: dict, images01: jnp.ndarray) -> jnp.ndarray:
  features = VGG19(last=_LAYER).apply({"params": params}, images01)
  return jnp.concatenate([features.mean(axis=(1, 2)), features.std(axis=(1, 2))], axis=-1)


def descriptors(photos: Sequence[pairs.Photo], params: dict, size: int,
                progress: pairs.Progress = pairs.no_progress) -> np.ndarray:
  """(N, 512) unit descriptors (relu3_1 channel means and standard deviations) of N photos,
  each resized to size x size."""
  out = []
  batches = [photos[i:i + _BATCH] for i in range(0, len(photos), _BATCH)]
  for batch in progress(batches, "describing photos"):
    images = np.zeros((_BATCH, size, size, 3), np.float32)
    for i, photo in enumerate(batch):
      images[i] = samples.resize_bicubic(np.ascontiguousarray(photo.load()), size, size) / 255.0
    out.append(np.asarray(_statistics(params, images))[:len(batch)])
  described = np.concatenate(out) if out else np.zeros((0, 2 * 256), np.float32)
  return described / np.maximum(np.linalg.norm(described, axis=-1, keepdims=True), 1e-12)


def most_similar(descriptor: np.ndarray, groups: Sequence[str]) -> list[int | None]:
  """For each photo, the index of the photo with the closest descriptor outside its group (the
  first on ties), or None when every photo is in its group."""
  similarity = descriptor @ descriptor.T
  labels = np.asarray(groups)
  similarity[labels[:, None] == labels[None, :]] = -np.inf
  best = similarity.argmax(axis=1)
  return [int(j) if np.isfinite(similarity[i, j]) else None for i, j in enumerate(best)]


def similar_photos(photos: Sequence[pairs.Photo], params: dict, size: int = 128,
                   progress: pairs.Progress = pairs.no_progress) -> dict[str, str]:
  """Photo name -> the name of the most similar photo outside its group, by the descriptors
  computed with VGG19 `params` (see `vgg_params`)."""
  described = descriptors(photos, params, size, progress)
  nearest = most_similar(described, [p.group for p in photos])
  return {p.name: photos[j].name for p, j in zip(photos, nearest) if j is not None}
