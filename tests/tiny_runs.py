"""Tiny real training runs shared by the loop, launch, config and report tests."""

import importlib.util
import os
import pathlib

import jax
import ml_collections
import numpy as np

from data_pipeline import cufed
from data_pipeline import make_demo
from ttsr_jax import checkpoint
from ttsr_jax import sharding
from ttsr_jax import specs

ROOT = pathlib.Path(__file__).resolve().parents[1]
TRAIN_PAIRS = 16
STEPS_PER_EPOCH = 8  # 16 pairs, batch 2
TOTAL_STEPS = 3 * STEPS_PER_EPOCH  # 1 warm-up + 2 main epochs

# Every loss term, 32x32 patches (the discriminator's smallest usable size), a narrow model.
TINY_CONFIG = """
from configs import default


def get_config():
  config = default.get_config()
  config.data.cufed_dir = {cufed_dir!r}
  config.model.n_feats = 8
  config.model.num_res_blocks = (1, 1, 1, 1)
  config.loss.update(rec_w=1.0, per_w=1e-2, tpl_w=1e-2, adv_w=1e-3)
  config.train_crop_size = 8
  config.batch_size = 2
  config.num_init_epochs = 1
  config.num_epochs = 2
  config.eval_every = 1
  config.checkpoint_every = 1
  config.keep_checkpoints = 2
  config.log_every = 2
  config.eval.num_image_grids = 1
  return config
"""


def write_tiny_run(directory: pathlib.Path, train_pairs: int = TRAIN_PAIRS) -> pathlib.Path:
  """A prepared tiny demo dataset (`train_pairs` pairs of 32x32, 2 test groups of up to 48x48)
  and the tiny config file for it, under `directory`; returns the config file."""
  cufed_dir = make_demo.make_demo(directory / "data", train_pairs=train_pairs, patch_size=32,
                                  test_groups=2, test_size=48)
  cufed.prepare(cufed_dir, patch_size=32)
  config_file = directory / "tiny_config.py"
  config_file.write_text(TINY_CONFIG.format(cufed_dir=str(cufed_dir)))
  return config_file


def load_config(config_file: pathlib.Path) -> ml_collections.ConfigDict:
  """`get_config()` of a config file, as launch.py's --config calls it."""
  spec = importlib.util.spec_from_file_location(config_file.stem, config_file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def subprocess_env() -> dict[str, str]:
  """The environment for launch.py subprocesses: this machine's CPU as one device, and the
  persistent compilation cache the tests use (see conftest.py)."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5", JAX_PLATFORMS="cpu")
  return env


def restore_state(workdir: pathlib.Path, config, step: int | None = None):
  """A checkpoint's TrainState as NumPy arrays (the latest step by default)."""
  with checkpoint.manager(workdir / checkpoint.CHECKPOINT_DIR, read_only=True) as mngr:
    step = mngr.latest_step() if step is None else step
    state, _ = checkpoint.restore(mngr, step, specs.train_spec(config),
                                  sharding.make_mesh(jax.devices()[:1]))
  return jax.device_get(state)


def assert_identical(a, b) -> None:
  leaves_a, tree_a = jax.tree_util.tree_flatten(a)
  leaves_b, tree_b = jax.tree_util.tree_flatten(b)
  assert tree_a == tree_b
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y)
