"""Host batches to normalised, globally sharded jax.Arrays, prepared ahead in a background thread.

Batches cross to the devices as uint8 (a quarter of the bytes of float32) and are normalised
there. The normalisation is a lookup in `samples.NORMALIZED`, which gives the reference's bits on
any backend. A compiled `x / 127.5 - 1` may become a multiplication by the reciprocal, as tf.data
and XLA on CPU do, and that is one ulp off for some values.
"""

import functools
import queue
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from data_pipeline import samples

T = TypeVar("T")
Batch = dict[str, jax.Array]


def _normalize(images: Batch) -> Batch:
  table = jnp.asarray(samples.NORMALIZED)
  return {key: table[image] for key, image in images.items()}


@functools.cache
def normalizer(batch_sharding: jax.sharding.NamedSharding) -> Callable[[Batch], Batch]:
  """uint8 -> float32 in [-1, 1], for batches laid out as `batch_sharding`.

  There is one function per layout, so every epoch reuses the compiled code.
  """
  # A gather from a sharded index array has no unambiguous output sharding under explicit mesh
  # axes, but each shard's lookup is local anyway: do it per shard.
  return jax.jit(jax.shard_map(_normalize, mesh=batch_sharding.mesh, in_specs=batch_sharding.spec,
                               out_specs=batch_sharding.spec))


_JOIN_TIMEOUT_S = 30.0


def prefetch(items: Iterable[T], size: int) -> Iterator[T]:
  """Produces `items` in a background thread, at most `size` ahead of the consumer."""
  buffer: queue.Queue = queue.Queue(maxsize=size)
  stop = threading.Event()

  def put(entry: tuple[str, object]) -> bool:
    while not stop.is_set():
      try:
        buffer.put(entry, timeout=0.1)
        return True
      except queue.Full:
        pass
    return False

  def produce() -> None:
    try:
      for item in items:
        if not put(("item", item)):
          return
      put(("end", None))
    except Exception as error:  # pylint: disable=broad-except  # re-raised by the consumer
      # The traceback's frames keep the producer's iterators (a tf.data one, say) alive; left so
      # until exit, they can hang interpreter shutdown. Clearing the frames' locals keeps the
      # traceback itself intact.
      traceback.clear_frames(error.__traceback__)
      put(("error", error))

  producer = threading.Thread(target=produce, daemon=True)
  producer.start()
  try:
    while True:
      kind, payload = buffer.get()
      if kind == "end":
        return
      if kind == "error":
        raise payload
      yield payload
  finally:
    # The consumer may stop early (SIGTERM); release the producer and wait for it to finish the
    # item in hand. A producer still inside tf.data when the interpreter exits aborts the
    # process ("FATAL: exception not rethrown") after the checkpoint has been written.
    stop.set()
    producer.join(timeout=_JOIN_TIMEOUT_S)


def to_device(host_batches: Iterable[dict[str, np.ndarray]],
              batch_sharding: jax.sharding.NamedSharding,
              prefetch_size: int = 2) -> Iterator[Batch]:
  """Turns each process's uint8 batches into global float32 batches laid out as `batch_sharding`.

  Args:
    host_batches: this process's part of each global batch; only `samples.IMAGE_KEYS` are used.
    batch_sharding: how a global batch lies on the devices (the batch axis split over a mesh
      axis: `ttsr_jax.sharding.batch_sharding`).
    prefetch_size: batches prepared ahead of the consumer.

  Returns:
    An iterator of dicts `samples.IMAGE_KEYS` -> float32 (global batch, H, W, 3) jax.Arrays.
  """
  normalize = normalizer(batch_sharding)
  batches = (normalize({key: jax.make_array_from_process_local_data(batch_sharding, batch[key])
                        for key in samples.IMAGE_KEYS}) for batch in host_batches)
  return prefetch(batches, prefetch_size)
