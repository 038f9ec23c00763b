"""Prints the training input pipeline's throughput in samples/s (160x160 patches, batch 9).

  python -m bench.input_pipeline [--cufed_dir DIR] [--pairs 300] [--epochs 3]   (from the checkout)

Without --cufed_dir it makes a demo dataset of `--pairs` pairs in a temporary directory. Two
figures: the host pipeline alone (decode, augment, batch: uint8 batches out of tf.data) and the
whole iterator the training loop uses (plus transfer and normalisation on the default device),
each as wall-clock samples/s and as CPU time per sample.
"""

import argparse
import os
import pathlib
import tempfile
import time
from collections.abc import Iterable

import jax

from data_pipeline import cufed
from data_pipeline import make_demo
from data_pipeline import train_batches
from ttsr_jax import sharding


def _measure(epochs: Iterable[Iterable[dict]], batch_size: int) -> str:
  """Samples per second of wall time and CPU milliseconds per sample, over all batches of all
  epochs but the very first batch (which pays for tracing and thread start-up).

  The CPU time (all threads of this process) says what the pipeline costs even when other
  programs share the machine, which makes the wall-clock figure noisy.
  """
  count, start = 0, None
  for batches in epochs:
    for batch in batches:
      jax.block_until_ready(batch)
      if start is None:
        start = time.perf_counter(), time.process_time()
      else:
        count += batch_size
  wall, cpu = time.perf_counter() - start[0], time.process_time() - start[1]
  cpu_ms = 1000 * cpu / count
  return (f"{count / wall:.0f} samples/s ({cpu_ms:.2f} CPU-ms per sample: "
          f"{1000 / cpu_ms * os.cpu_count():.0f} samples/s if all {os.cpu_count()} CPUs were free)")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--cufed_dir", default=None, help="CUFED root (default: a fresh demo)")
  parser.add_argument("--pairs", type=int, default=300, help="demo training pairs")
  parser.add_argument("--epochs", type=int, default=3)
  parser.add_argument("--batch_size", type=int, default=9)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as scratch:
    cufed_dir = pathlib.Path(args.cufed_dir or make_demo.make_demo(
        scratch, train_pairs=args.pairs, test_groups=0))
    cufed.prepare(cufed_dir)
    shard = train_batches.load_train_shard(cufed.default_data_dir(cufed_dir))
    batch_sharding = sharding.batch_sharding(sharding.make_mesh())
    epochs = range(args.epochs)
    host = _measure((train_batches.train_dataset(shard, seed=0, epoch=e,
                                                 global_batch_size=args.batch_size)
                     .as_numpy_iterator() for e in epochs), args.batch_size)
    device = _measure((train_batches.train_iterator(shard, seed=0, epoch=e,
                                                    global_batch_size=args.batch_size,
                                                    batch_sharding=batch_sharding)
                       for e in epochs), args.batch_size)
  platform = jax.devices()[0].platform
  print(f"{shard.num_examples} examples, {shard.patch_size}x{shard.patch_size} patches, "
        f"batch {args.batch_size}, {os.cpu_count()} CPUs, {args.epochs} epochs")
  print(f"host pipeline (tf.data, uint8): {host}")
  print(f"train_iterator (on {platform}, float32): {device}")

if __name__ == "__main__":
  main()
