"""CUFED data for TTSR: the reference's samples, prepared once, then fed deterministically.

Modules (import the one you need; only `cufed`, `train_batches` and `prepare` import
TensorFlow):
  files      CUFED layout, image reading and the `DatasetError` family
  samples    the reference's train / test samples with NumPy and Pillow (uint8, HWC)
  cufed      the TFDS builder `cufed` and `prepare()` (all the Pillow work, once)
  prepare    `python -m data_pipeline.prepare`: the preparation command
  train_batches   training batches: (seed, epoch)-determined order and augmentation, host
                  shards, global jax.Arrays
  host_to_device  host batches to normalised, globally sharded jax.Arrays, prefetched (no TF)
  cufed5     CUFED5 test samples: one reference level, or all five stitched together
  testsets   Sun80, Urban100, Manga109 and WR-SR in their published layouts
  make_demo  `python -m data_pipeline.make_demo`: a small CUFED-layout dataset from skimage photos
  pairs      the rules of make_demo and of `python -m ttsr_jax.make_pairs` (which needs the
             model's VGG19 for --similar, so lives above this package): photos to training pairs
             and test groups

Nothing here imports ttsr_jax; ttsr_jax builds on this package.

docs/data.md describes the layout, the commands, determinism and the test protocols.
"""

import os

# Before any TensorFlow import: no C++ info logs, and no oneDNN kernels, whose results may depend
# on the CPU (setdefault: a user's own setting wins).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
