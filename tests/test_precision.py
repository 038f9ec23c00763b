"""The precision policies (models/precision.py): what 'fast' computes in bfloat16 and what it
keeps in float32, how far it moves a tiny model, and the profiler switch."""

import functools

from absl import logging as absl_logging
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tiny_configs
from tiny_configs import TINY, random_inputs, random_params
from ttsr_jax import specs
from ttsr_jax import step as step_lib
from ttsr_jax import train
from ttsr_jax.models.ttsr import TTSR

@pytest.fixture(scope="module")
def forwards():
  """Outputs of the same tiny TTSR under 'exact' and 'fast'."""
  inputs = random_inputs(1, (4, 4), (16, 16))
  params = random_params()
  return {p: jax.jit(TTSR(**TINY, precision=p).apply)({"params": params}, *inputs)
          for p in ("exact", "fast")}


def test_fast_outputs_are_float32_and_close_to_exact(forwards):
  exact, fast = forwards["exact"], forwards["fast"]
  for name, value in fast._asdict().items():
    if name != "index":
      assert value.dtype == jnp.float32, name
  diff = float(jnp.abs(fast.sr - exact.sr).max())
  # bfloat16 keeps 8 significant bits: sr moves, but by far less than one uint8 level (2/255).
  assert 0 < diff < 2 / 255, diff


def test_fast_search_runs_in_float32(forwards):
  # The LTE and the search compute in float32 under 'fast': the same argmax, S and textures.
  exact, fast = forwards["exact"], forwards["fast"]
  np.testing.assert_array_equal(np.asarray(fast.index), np.asarray(exact.index))
  # The same float32 computation (measured equal on three draws): a few ulps allow for XLA
  # fusing it differently, while bfloat16 there would move them by about 2^-9 relative.
  for name in ("S", "T_lv3", "T_lv2", "T_lv1"):
    np.testing.assert_allclose(getattr(fast, name), getattr(exact, name), rtol=1e-6, atol=1e-7,
                               err_msg=name)


def test_fast_step_keeps_parameters_gradients_and_optimiser_in_float32():
  # Traced, not compiled: the dtypes are fixed at tracing, and bfloat16 compiles slowly on CPUs.
  config = tiny_configs.all_losses(train_crop_size=8, batch_size=2)
  config.model.precision = "fast"
  config.loss.update(tpl_w=0.0, gan_k=1)  # the texture loss's LTE is float32 anyway
  spec = specs.train_spec(config)
  vgg = jax.eval_shape(lambda: step_lib.init_vgg_params(spec.model, jax.random.key(1)))
  state = jax.eval_shape(lambda v: step_lib.create_train_state(spec, v, 10), vgg)
  hr, ref = random_inputs(2, (32, 32), (32, 32))[2:]
  batch = dict(lr=hr[:, ::4, ::4], lrsr=hr, hr=hr, ref=ref, refsr=ref)
  epsilons = jnp.zeros((spec.loss.gan_k, 2))
  iteration = step_lib.make_iteration(spec, 10, warmup=False)
  gradients, d_params, d_opt_state, metrics = jax.eval_shape(
      functools.partial(step_lib.d_updates_and_g_gradients, iteration), state, batch, vgg,
      epsilons)
  trees = {"state": state, "gradients": gradients, "d_params": d_params,
           "d_opt_state": d_opt_state, "metrics": metrics}
  for name, tree in trees.items():
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
      if jnp.issubdtype(leaf.dtype, jnp.floating):
        assert leaf.dtype == jnp.float32, (name, jax.tree_util.keystr(path))
  assert set(metrics) >= {"loss/per", "loss/adv", "d/gradient_penalty"}


def test_unknown_precision_is_a_clear_error():
  config = tiny_configs.all_losses(train_crop_size=8, batch_size=2)
  config.model.precision = "half"
  with pytest.raises(specs.SpecError, match=r"config.model.precision 'half': expected one of "
                                            r"'exact', 'fast'"):
    specs.train_spec(config)


@pytest.mark.parametrize("num_steps", [0, 2])
def test_profiler_traces_steps_after_the_first(tmp_path, num_steps):
  double = jax.jit(lambda x: 2 * x)
  profiler = train.StepProfiler(tmp_path, num_steps)
  x = jnp.ones(4)
  for step in range(4):
    profiler.before_step(step)
    x = double(x)
    profiler.after_step(x)
  profiler.close()
  traces = list(tmp_path.glob("plugins/profile/*/*.xplane.pb"))
  assert len(traces) == (1 if num_steps else 0)


@pytest.fixture
def absl_warnings():
  """absl passes warnings on to `logging` (commands that other tests run in this process, such
  as infer and report, turn its verbosity down to errors)."""
  previous = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.WARNING)
  yield
  absl_logging.set_verbosity(previous)


def test_accelerator_config_on_cpu_only_logs_how_to_install(caplog, absl_warnings):
  import launch  # pylint: disable=import-outside-toplevel  # defines absl flags
  config = tiny_configs.all_losses(train_crop_size=8, batch_size=2)
  with caplog.at_level("WARNING"):
    launch._warn_if_cpu_only(config)  # pylint: disable=protected-access
    assert not caplog.records
    config.model.precision = "fast"
    launch._warn_if_cpu_only(config)  # pylint: disable=protected-access
  assert "model.precision='fast'" in caplog.text and "pip install -e '.[cuda13]'" in caplog.text
