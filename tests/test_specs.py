"""Specs: every config check fails with one line naming the key, and the specs carry the config's
values to the model, the step, the evaluation and the training run."""

import dataclasses
import json

import pytest

import tiny_configs
from configs import default
from ttsr_jax import specs
from ttsr_jax.models.ttsr import TTSR


@pytest.mark.parametrize("key,value,message", [
    ("model.precision", "half", r"config.model.precision 'half': expected one of 'exact', 'fast'"),
    ("model.num_res_blocks", (1, 1, 1), r"config.model.num_res_blocks \(1, 1, 1\): expected four"),
    ("model.n_feats", 0, r"config.model.n_feats 0: expected an integer >= 1"),
    ("model.search_chunk_size", -1, r"config.model.search_chunk_size -1: expected an integer >= 0"),
    ("model.search_mode", "fast", r"config.model.search_mode 'fast': expected one of exact, "),
    ("loss.gan_k", -1, r"config.loss.gan_k -1: expected an integer >= 0"),
    ("loss.tpl_type", "l3", r"config.loss.tpl_type 'l3': expected one of \('l1', 'l2'\)"),
    ("train_crop_size", 0, r"config.train_crop_size 0: expected an integer >= 1"),
    ("microbatches", -1, r"config.microbatches -1: expected an integer >= 0"),
    ("microbatches", 2, r"config.batch_size 9 is not divisible by config.microbatches 2"),
    ("batch_size", 0, r"config.batch_size 0: expected an integer >= 1"),
    ("num_init_epochs", -1, r"config.num_init_epochs -1: expected an integer >= 0"),
    ("num_epochs", -1, r"config.num_epochs -1: expected an integer >= 0"),
    ("eval_every", -1, r"config.eval_every -1: expected an integer >= 0"),
    ("checkpoint_every", 0, r"config.checkpoint_every 0: expected an integer >= 1"),
    ("keep_checkpoints", 0, r"config.keep_checkpoints 0: expected an integer >= 1"),
    ("log_every", 0, r"config.log_every 0: expected an integer >= 1"),
    ("profile_steps", -1, r"config.profile_steps -1: expected an integer >= 0"),
    ("eval.sets", "cufed5,sun90", r"config.eval.sets 'cufed5,sun90': expected distinct"),
    ("eval.levels", (6,), r"config.eval.levels: level 6 is not in 1..5"),
    ("eval.levels", (), r"config.eval: no protocol to evaluate; set levels or multi_reference"),
    ("eval.protocol", "psnr", r"config.eval.protocol 'psnr': expected one of"),
    ("eval.crop_border", 2, r"config.eval.crop_border and y_channel apply to protocol 'mmagic'"),
    ("eval.sun80_reference", "best", r"config.eval.sun80_reference 'best': expected one of"),
    ("eval.sizes", "resize", r"config.eval.sizes 'resize': expected one of"),
    ("eval.num_images", -1, r"config.eval.num_images -1: expected an integer >= 0"),
    ("eval.search_mode", "fast", r"config.eval.search_mode 'fast': expected one of exact, "),
])
def test_each_bad_value_is_one_line_naming_its_key(key, value, message):
  config = default.get_config()
  *parents, field = key.split(".")
  node = config
  for parent in parents:
    node = node[parent]
  node[field] = value
  for make_spec in (specs.train_spec, specs.eval_spec, specs.run_spec):  # each runs every check
    with pytest.raises(specs.SpecError, match=message) as error:
      make_spec(config)
    assert "\n" not in str(error.value)


def test_specs_carry_the_config():
  config = tiny_configs.all_losses(train_crop_size=8, batch_size=4)
  config.model.search_chunk_size = 64
  spec = specs.train_spec(config)
  assert spec.model.num_res_blocks == (1, 1, 1, 1) and spec.model.n_feats == 8
  assert (spec.loss.adv_w, spec.loss.gan_k, spec.optim.eps) == (1e-3, 2, 1e-3)
  assert (spec.train_crop_size, spec.microbatches, spec.seed) == (8, 1, 0)
  with pytest.raises(dataclasses.FrozenInstanceError):
    spec.microbatches = 2  # type: ignore[misc]
  model = spec.model.build(search_chunk_size=128)
  assert isinstance(model, TTSR)
  assert (model.n_feats, model.num_res_blocks, model.search_chunk_size) == (8, (1, 1, 1, 1), 128)
  assert model.search_mode == "exact"
  assert spec.model.build().search_chunk_size == 64


def test_eval_spec_carries_the_config_and_records_it_as_written():
  config = default.get_config()
  config.eval.update(sets=" Sun80, cufed5", levels=(1, 3), protocol="mmagic", crop_border=2)
  config.data.cufed_dir = "data/custom"
  spec = specs.eval_spec(config)
  assert (spec.sets, spec.levels, spec.cufed_dir) == (("sun80", "cufed5"), (1, 3), "data/custom")
  # Evaluation records (eval_<step>.json) keep the `config.eval` values as before the spec.
  assert spec.settings() == {**config.eval.to_dict(), "sets": "sun80,cufed5"}


def test_run_spec_carries_the_schedule_the_files_and_the_whole_config():
  config = tiny_configs.all_losses(train_crop_size=8, batch_size=4)
  config.update(num_epochs=5, eval_every=0, checkpoint_every=2, keep_checkpoints=1, log_every=7,
                profile_steps=3)
  config.data.update(cufed_dir="data/custom", data_dir="data/tfds")
  config.model.vgg19_weights = "vgg19.npz"
  run = specs.run_spec(config)
  assert (run.train, run.evaluation) == (specs.train_spec(config), specs.eval_spec(config))
  assert (run.batch_size, run.num_epochs, run.eval_every, run.checkpoint_every,
          run.keep_checkpoints, run.log_every, run.profile_steps) == (4, 5, 0, 2, 1, 7, 3)
  assert (run.cufed_dir, run.data_dir, run.vgg19_weights) == ("data/custom", "data/tfds",
                                                              "vgg19.npz")
  # As a checkpoint stores it (JSON: sequences as lists), and a copy the caller may change.
  assert run.config() == json.loads(json.dumps(config.to_dict()))
  run.config()["model"]["n_feats"] = 64
  assert run.config()["model"]["n_feats"] == 8
  with pytest.raises(dataclasses.FrozenInstanceError):
    run.num_epochs = 6  # type: ignore[misc]
