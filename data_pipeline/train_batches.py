"""Training batches from the prepared `cufed` dataset: decode, augment, batch, place on devices.

Determinism: the order of an epoch is a permutation of the whole split drawn from (seed, epoch);
the augmentation of an example is drawn from (seed, epoch, example index). Both use stateless
TF random ops with explicit keys, so any batch of any epoch can be rebuilt without saved iterator
state: resuming at batch k yields exactly the batches k, k+1, ... of the uninterrupted epoch.

Multi-host: each process reads its own part of the split (`tfds.even_splits`), keeps the
epoch's global order restricted to its examples, and contributes `global_batch_size /
process_count` examples to each global batch. Every process runs the same number of steps
(the smallest shard decides; the remainder is dropped).
"""

import dataclasses
import pathlib
from collections.abc import Iterator

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from data_pipeline import cufed
from data_pipeline import host_to_device
from data_pipeline import files
from data_pipeline import samples

# Salts that separate the two random streams drawn from the same (seed, epoch).
_ORDER_SALT = 0
_DRAWS_SALT = 1
# Flip draws are 0/1, rotation draws 0..3; see `apply_draws` for their order.
_DRAW_RANGES = (2, 2, 2, 2, 4, 4)
_GROUP = {"lr": 0, "lrsr": 0, "hr": 0, "ref": 1, "refsr": 1}
_CHUNK = 64


@dataclasses.dataclass(frozen=True)
class TrainShard:
  """The training examples this process reads, PNG-encoded in memory.

  Attributes:
    encoded: for each of `samples.IMAGE_KEYS`, the PNG bytes of the local examples (an object
      array, in the order of `indices`).
    indices: the split-wide index of each local example, ascending.
    num_examples: examples in the whole split.
    patch_size: side of the training patch.
    process_index: which shard this is.
    process_count: how many shards the split is cut into.
  """
  encoded: dict[str, np.ndarray]
  indices: np.ndarray
  num_examples: int
  patch_size: int
  process_index: int
  process_count: int

  def steps_per_epoch(self, global_batch_size: int) -> int:
    """Global batches per epoch; the same on every process."""
    return self.num_examples // self.process_count // self.local_batch_size(global_batch_size)

  def local_batch_size(self, global_batch_size: int) -> int:
    """Examples this process contributes to each global batch."""
    if global_batch_size <= 0 or global_batch_size % self.process_count:
      raise ValueError(f"global batch size {global_batch_size}: expected a positive multiple of "
                       f"the process count {self.process_count}")
    return global_batch_size // self.process_count


def load_train_shard(data_dir: str | pathlib.Path,
                     patch_size: int = samples.DEFAULT_PATCH_SIZE, *,
                     process_index: int | None = None,
                     process_count: int | None = None) -> TrainShard:
  """Reads this process's part of the prepared training split into memory.

  Args:
    data_dir: the TFDS data directory that `data_pipeline.prepare` wrote.
    patch_size: the patch size it was prepared with.
    process_index: this process; defaults to `jax.process_index()`.
    process_count: the number of processes; defaults to `jax.process_count()`.

  Returns:
    The shard, to be iterated with `train_dataset` or `train_iterator` once per epoch.
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index}: expected 0 <= index < {process_count}")
  builder = cufed.builder(data_dir, patch_size)
  if not builder.is_prepared():
    raise files.MissingDataError(
        f"{builder.data_dir}: prepared dataset not found, expected the output of "
        f"`python -m data_pipeline.prepare --data_dir {data_dir} --patch_size {patch_size} ...`")
  split = tfds.even_splits("train", process_count)[process_index]
  keep_png = {key: tfds.decode.SkipDecoding() for key in samples.IMAGE_KEYS}
  dataset = builder.as_dataset(split=split, shuffle_files=False, decoders=keep_png)
  examples = list(dataset.as_numpy_iterator())
  indices = np.array([example["index"] for example in examples], np.int64)
  # TFDS stores examples in hashed-key order; sorting by index makes the shard canonical.
  order = np.argsort(indices)
  encoded = {key: np.array([example[key] for example in examples], object)[order]
             for key in samples.IMAGE_KEYS}
  return TrainShard(
      encoded=encoded,
      indices=indices[order],
      num_examples=builder.info.splits["train"].num_examples,
      patch_size=patch_size,
      process_index=process_index,
      process_count=process_count)


def _epoch_key(seed: int, epoch: int, salt: int) -> tf.Tensor:
  return tf.random.experimental.stateless_fold_in(
      tf.constant([seed, epoch], tf.int64), salt, alg="philox")


def epoch_order(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  """The split-wide example indices in the order epoch `epoch` visits them."""
  return tf.random.experimental.index_shuffle(
      tf.range(num_examples, dtype=tf.int64), _epoch_key(seed, epoch, _ORDER_SALT),
      num_examples - 1).numpy()


def augment_draws(seed: int, epoch: int, index: tf.Tensor | int) -> tf.Tensor:
  """The six augmentation draws of example `index` in epoch `epoch` (see `apply_draws`)."""
  key = tf.random.experimental.stateless_fold_in(
      _epoch_key(seed, epoch, _DRAWS_SALT), tf.cast(index, tf.int64), alg="philox")
  uniform = tf.random.stateless_uniform(
      [len(_DRAW_RANGES)], key, minval=0, maxval=max(_DRAW_RANGES), dtype=tf.int32, alg="philox")
  return uniform % _DRAW_RANGES


def apply_draws(sample: dict[str, tf.Tensor], draws: tf.Tensor) -> dict[str, tf.Tensor]:
  """The reference's augmentation with the given draws, on HWC images.

  Args:
    sample: images keyed as in `samples.IMAGE_KEYS` (any dtype).
    draws: six integers, in the order the reference draws them: flip the input group (lr, lrsr,
      hr) left-right, flip the reference group (ref, refsr) left-right, flip the input group
      up-down, flip the reference group up-down, k1, k2; then the input group is rotated by
      `np.rot90(., k1)` and the reference group by `np.rot90(., k2)` (counter-clockwise in the
      (H, W) plane).

  Returns:
    The augmented images.
  """
  def orient(image: tf.Tensor, group: int) -> tf.Tensor:
    # np.rot90(y, k) is y reversed along no axis, W, H and W, H (for k = 0..3), then transposed
    # if k is odd; merged with the flips' reversals this is one reverse and one transpose, and no
    # control flow (which costs more per example than the pixel work).
    flip_w, flip_h, k = draws[group] == 1, draws[2 + group] == 1, draws[4 + group]
    reverse_h = tf.math.logical_xor(flip_h, k >= 2)
    reverse_w = tf.math.logical_xor(flip_w, (k == 1) | (k == 2))
    image = tf.reverse(image, tf.boolean_mask([0, 1], tf.stack([reverse_h, reverse_w])))
    return tf.transpose(image, tf.where(k % 2 == 1, [1, 0, 2], [0, 1, 2]))

  return {key: orient(image, _GROUP[key]) for key, image in sample.items()}


def train_dataset(shard: TrainShard, *, seed: int, epoch: int, global_batch_size: int,
                  start_batch: int = 0, augment: bool = True) -> tf.data.Dataset:
  """This process's batches of one epoch, from global batch `start_batch` on.

  Args:
    shard: from `load_train_shard`.
    seed: the run's data seed.
    epoch: the epoch number (any integer; each gives its own order and augmentation).
    global_batch_size: examples per step over all processes (the reference uses 9).
    start_batch: the first batch to produce (to resume mid-epoch).
    augment: apply the reference's random flips and rotations.

  Returns:
    A dataset of dicts: `samples.IMAGE_KEYS` as uint8 NHWC and `index` (int64, the examples'
    split-wide indices), `global_batch_size / process_count` examples each. Normalisation is left
    to the devices (`train_iterator`, see `host_to_device`).
  """
  local_batch_size = shard.local_batch_size(global_batch_size)
  steps = shard.steps_per_epoch(global_batch_size)
  if not 0 <= start_batch <= steps:
    raise ValueError(f"start_batch {start_batch}: expected 0 <= start_batch <= {steps}")
  order = epoch_order(seed, epoch, shard.num_examples)
  positions = np.searchsorted(shard.indices, order[np.isin(order, shard.indices)])
  positions = positions[start_batch * local_batch_size:steps * local_batch_size]

  def encoded() -> Iterator[tuple[np.ndarray, ...]]:
    # Chunks, because handing elements one by one to tf.data costs a Python call each.
    for start in range(0, len(positions), _CHUNK):
      chunk = positions[start:start + _CHUNK]
      yield (shard.indices[chunk], *(shard.encoded[key][chunk] for key in samples.IMAGE_KEYS))

  patch, low = shard.patch_size, shard.patch_size // samples.SCALE
  shapes = {key: (low, low, 3) if key == "lr" else (patch, patch, 3) for key in samples.IMAGE_KEYS}

  def decode(index: tf.Tensor, *pngs: tf.Tensor) -> dict[str, tf.Tensor]:
    images = {key: tf.ensure_shape(tf.io.decode_png(png, channels=3), shapes[key])
              for key, png in zip(samples.IMAGE_KEYS, pngs)}
    if augment:
      images = apply_draws(images, augment_draws(seed, epoch, index))
    return {**images, "index": index}

  signature = ((tf.TensorSpec((None,), tf.int64),)
               + (tf.TensorSpec((None,), tf.string),) * len(shapes))
  dataset = tf.data.Dataset.from_generator(encoded, output_signature=signature).unbatch()
  dataset = dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return dataset.batch(local_batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def train_iterator(shard: TrainShard, *, seed: int, epoch: int, global_batch_size: int,
                   batch_sharding: jax.sharding.NamedSharding, start_batch: int = 0,
                   augment: bool = True,
                   prefetch: int = 2) -> Iterator[dict[str, jax.Array]]:
  """One epoch of global training batches, laid out as `batch_sharding`.

  Args:
    shard: from `load_train_shard` (with the real process index and count).
    seed, epoch, global_batch_size, start_batch, augment: as in `train_dataset`.
    batch_sharding: how a global batch lies on the devices (`ttsr_jax.sharding.batch_sharding`:
      split along the mesh axis 'data', replicated over any other).
    prefetch: batches placed on the devices ahead of the consumer.

  Returns:
    An iterator of dicts `samples.IMAGE_KEYS` -> float32 (global_batch_size, H, W, 3) jax.Arrays;
    `shard.steps_per_epoch(global_batch_size) - start_batch` of them.
  """
  if shard.process_count != jax.process_count():
    raise ValueError(f"shard of {shard.process_count} processes: expected jax.process_count() = "
                     f"{jax.process_count()}")
  dataset = train_dataset(shard, seed=seed, epoch=epoch, global_batch_size=global_batch_size,
                          start_batch=start_batch, augment=augment)
  return host_to_device.to_device(dataset.as_numpy_iterator(), batch_sharding, prefetch)
