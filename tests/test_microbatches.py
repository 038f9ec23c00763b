"""Gradient accumulation (`config.microbatches`): how the batch is split, and the check of its
size. That a microbatched step equals the whole batch at once is tested with the other layouts
of the step, sharing their compiled one-device step (test_sharding.py)."""

import numpy as np
import pytest

from ttsr_jax import sharding, step


def test_split_and_merge_microbatches():
  x = np.arange(12)
  split = step.split_microbatches({"x": x}, 3)["x"]
  # Microbatch k holds rows k, k + 3, ...: with the batch split over devices in contiguous
  # blocks, every microbatch has an equal share of each device's rows.
  np.testing.assert_array_equal(split, [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8, 11]])
  np.testing.assert_array_equal(step.merge_microbatches(split), x)


def test_microbatches_must_divide_the_batch():
  sharding.check_batch_size(9, 1, microbatches=3)
  with pytest.raises(ValueError, match=r"batch_size 9 is not divisible by 1 devices x 2 "
                                       r"microbatches; choose a multiple of 2"):
    sharding.check_batch_size(9, 1, microbatches=2)
  with pytest.raises(ValueError, match="microbatches must be at least 1"):
    sharding.check_batch_size(9, 1, microbatches=0)
