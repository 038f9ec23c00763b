"""Gradient accumulation (`config.microbatches`): how the batch is split, and the check of its
size. That a microbatched step equals the whole batch at once is tested with the other layouts
of the step, sharing their compiled one-device step (test_sharding.py)."""

import types

import jax
import numpy as np
import pytest
import tiny_configs

from ttsr_jax import sharding, specs, step
from ttsr_jax.models import search_transfer


def test_split_and_merge_microbatches():
  x = np.arange(12)
  split = step.split_microbatches({"x": x}, 3)["x"]
  # Microbatch k holds rows k, k + 3, ...: with the batch split over devices in contiguous
  # blocks, every microbatch has an equal share of each device's rows.
  np.testing.assert_array_equal(split, [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8, 11]])
  np.testing.assert_array_equal(step.merge_microbatches(split), x)


def test_microbatches_picked_per_machine():
  """0 means one sample per device per microbatch on CPUs, the whole batch elsewhere."""
  def mesh(platform, size):
    return types.SimpleNamespace(size=size, devices=np.array(
        [types.SimpleNamespace(platform=platform)] * size))

  assert sharding.resolve_microbatches(0, 9, mesh("cpu", 1)) == 9
  assert sharding.resolve_microbatches(0, 12, mesh("cpu", 4)) == 3
  assert sharding.resolve_microbatches(0, 12, mesh("gpu", 4)) == 1
  assert sharding.resolve_microbatches(0, 12, mesh("tpu", 4)) == 1
  assert sharding.resolve_microbatches(2, 12, mesh("cpu", 4)) == 2
  assert sharding.resolve_microbatches(3, 12, mesh("gpu", 4)) == 3
  config = tiny_configs.all_losses(train_crop_size=8, batch_size=2)
  config.microbatches = 0
  with pytest.raises(ValueError, match="resolve 0"):
    step.make_iteration(specs.train_spec(config), 1, warmup=False)


def test_microbatches_must_divide_the_batch():
  sharding.check_batch_size(9, 1, microbatches=3)
  with pytest.raises(ValueError, match=r"batch_size 9 is not divisible by 1 devices x 2 "
                                       r"microbatches; choose a multiple of 2"):
    sharding.check_batch_size(9, 1, microbatches=2)
  with pytest.raises(ValueError, match="microbatches must be at least 1"):
    sharding.check_batch_size(9, 1, microbatches=0)


def test_adversarial_microbatches_search_once(monkeypatch):
  """The microbatched all-losses step runs the generator's forward pass twice (D needs the whole
  batch's sr first); the second takes the first's hard-attention index instead of searching."""
  searches = []
  argmax = search_transfer._relevance_argmax

  def counted(*args, **kwargs):
    searches.append(args[0].shape)
    return argmax(*args, **kwargs)

  config = tiny_configs.all_losses(train_crop_size=8, batch_size=2)
  config.microbatches = 2
  spec = specs.train_spec(config)
  vgg_params = step.init_vgg_params(spec.model, jax.random.key(1))
  state = jax.eval_shape(lambda: step.create_train_state(spec, vgg_params, 1))
  monkeypatch.setattr(search_transfer, "_relevance_argmax", counted)
  batch = {name: jax.ShapeDtypeStruct((2, *shape), np.float32) for name, shape in
           [("lr", (8, 8, 3)), ("lrsr", (32, 32, 3)), ("hr", (32, 32, 3)),
            ("ref", (32, 32, 3)), ("refsr", (32, 32, 3))]}
  jax.eval_shape(step.make_train_step(spec, 1, warmup=False), state, batch, vgg_params)
  # Traced once, in the body of the loop over microbatches (one sample each).
  assert searches == [(1, 8 * 8, 9 * 256)]
