"""Every config loads and builds (abstract shapes only), with the settings its sources give."""

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import pytest

from data_pipeline import samples
from tiny_runs import ROOT, load_config
from ttsr_jax import checkpoint
from ttsr_jax import sharding
from ttsr_jax import specs
from ttsr_jax import step
from ttsr_jax import train

CONFIG_FILES = sorted(p for p in (ROOT / "configs").glob("*.py") if p.name != "__init__.py")
PRETRAINED = ("exp1_1", "exp1_2", "exp1_3", "ttsr_rec", "ttsr_gan")
# (batch_size, num_init_epochs, num_epochs, (rec_w, per_w, tpl_w, adv_w), lte_reduce_lv3) from
# the project's experiment list (exp1_*, docs/training.md) and the reference's train.sh (ttsr_*).
EXPECTED = {
    "exp1_1": (8, 0, 30, (1.0, 0.0, 0.0, 0.0), False),
    "exp1_2": (6, 2, 30, (1.0, 1e-2, 1e-2, 1e-2), False),
    "exp1_3": (11, 0, 30, (1.0, 0.0, 0.0, 0.0), True),
    "ttsr_rec": (9, 0, 200, (1.0, 0.0, 0.0, 0.0), False),
    "ttsr_gan": (9, 2, 50, (1.0, 1e-2, 1e-2, 1e-3), False),
}


def test_every_experiment_is_checked():
  assert {p.stem for p in CONFIG_FILES} == {"default", "demo", *EXPECTED}


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_config_builds_a_train_step(path):
  config = load_config(path)
  mesh = sharding.make_mesh(jax.devices()[:1])
  spec = specs.train_spec(config)
  spec = dataclasses.replace(spec, microbatches=sharding.resolve_microbatches(
      spec.microbatches, config.batch_size, mesh))
  state = checkpoint.abstract_train_state(spec, mesh)
  vgg = jax.eval_shape(lambda key: step.init_vgg_params(spec.model, key), jax.random.PRNGKey(0))
  patch, low = 4 * config.train_crop_size, config.train_crop_size
  batch = {key: jax.ShapeDtypeStruct((config.batch_size, patch, patch, 3), jnp.float32)
           for key in samples.IMAGE_KEYS}
  batch["lr"] = jax.ShapeDtypeStruct((config.batch_size, low, low, 3), jnp.float32)
  # The main step (warm-up steps compute a subset of it) with every loss the config weights.
  train_step = step.make_train_step(spec, steps_per_epoch=10, warmup=False)
  new_state, metrics = jax.eval_shape(train_step, state, batch, vgg)
  assert jax.tree_util.tree_structure(new_state) == jax.tree_util.tree_structure(state)
  assert metrics["loss/total"].shape == ()
  assert ("loss/adv" in metrics) == (config.loss.adv_w != 0)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_experiment_settings_and_pretrained_vgg_requirement(name, tmp_path, monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  config = load_config(ROOT / "configs" / f"{name}.py")
  batch_size, init_epochs, epochs, weights, reduce_lv3 = EXPECTED[name]
  assert (config.batch_size, config.num_init_epochs, config.num_epochs) == (batch_size,
                                                                            init_epochs, epochs)
  assert (config.loss.rec_w, config.loss.per_w, config.loss.tpl_w, config.loss.adv_w) == weights
  assert config.model.lte_reduce_lv3 == reduce_lv3
  assert config.microbatches == 0  # picked per machine
  assert (config.model.n_feats, tuple(config.model.num_res_blocks)) == (64, (16, 16, 8, 4))
  assert config.model.vgg19_weights == str(tmp_path / "ttsr_jax" / "vgg19.npz")
  with pytest.raises(train.TrainError, match=r"python -m ttsr_jax\.tools\.vgg19"):
    train.load_vgg_params(config.model.vgg19_weights, specs.model_spec(config.model),
                          config.seed)


def test_demo_uses_a_random_vgg_and_the_demo_dataset():
  config = load_config(ROOT / "configs" / "demo.py")
  assert config.model.vgg19_weights is None
  assert pathlib.Path(config.data.cufed_dir) == pathlib.Path("data/demo")
