"""Gradient accumulation (`config.microbatches`): the same step as the whole batch at once."""

import functools

import jax
import numpy as np
import pytest

import tiny_configs
from ttsr_jax import sharding, specs, step


def _tiny_spec(microbatches: int) -> specs.TrainSpec:
  config = tiny_configs.all_losses(train_crop_size=8, batch_size=4)  # D sees 32x32
  config.microbatches = microbatches
  return specs.train_spec(config)


def test_split_and_merge_microbatches():
  x = np.arange(12)
  split = step.split_microbatches({"x": x}, 3)["x"]
  # Microbatch k holds rows k, k + 3, ...: with the batch split over devices in contiguous
  # blocks, every microbatch has an equal share of each device's rows.
  np.testing.assert_array_equal(split, [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8, 11]])
  np.testing.assert_array_equal(step.merge_microbatches(split), x)


@pytest.mark.slow  # compiles two all-losses train steps, about a minute of XLA:CPU's time
def test_microbatched_step_matches_whole_batch():
  """All losses and two D updates: sr, the D inputs, epsilons and hr must stay paired."""
  rng = np.random.RandomState(0)
  hr = rng.uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
  ref = rng.uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
  batch = dict(lr=hr[:, ::4, ::4], lrsr=hr * 0.9, hr=hr, ref=ref, refsr=ref * 0.9)
  epsilons = rng.uniform(0, 1, (2, 4)).astype(np.float32)
  whole = _tiny_spec(1)
  vgg_params = step.init_vgg_params(whole.model, jax.random.PRNGKey(1))
  results = []
  for spec in (whole, _tiny_spec(2)):
    state = step.create_train_state(spec, vgg_params, steps_per_epoch=1)
    update = jax.jit(functools.partial(step.update, step.make_iteration(spec, 1, warmup=False)))
    results.append(jax.device_get(update(state, batch, vgg_params, epsilons)))
  (state_1, metrics_1), (state_2, metrics_2) = results
  assert metrics_1.keys() == metrics_2.keys()
  for name in metrics_1:
    np.testing.assert_allclose(metrics_2[name], metrics_1[name], rtol=1e-5, atol=1e-7,
                               err_msg=name)
  for a, b in zip(jax.tree_util.tree_leaves((state_1.g_params, state_1.d_params)),
                  jax.tree_util.tree_leaves((state_2.g_params, state_2.d_params))):
    np.testing.assert_allclose(b, a, atol=1e-6)


def test_microbatches_must_divide_the_batch():
  sharding.check_batch_size(9, 1, microbatches=3)
  with pytest.raises(ValueError, match=r"batch_size 9 is not divisible by 1 devices x 2 "
                                       r"microbatches; choose a multiple of 2"):
    sharding.check_batch_size(9, 1, microbatches=2)
  with pytest.raises(ValueError, match="microbatches must be at least 1"):
    sharding.check_batch_size(9, 1, microbatches=0)
