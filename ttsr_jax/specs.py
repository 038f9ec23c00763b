"""Frozen, typed views of an experiment's config, made and checked once at an entry point.

The `ml_collections.ConfigDict` is what a person edits (configs/*.py, `--config.x=...` flags).
The commands turn it into these specs with `model_spec` / `train_spec`, which first run every
check (`check`) so a bad value fails with one line naming its key, before anything compiles;
the libraries below take specs or plain values, never the ConfigDict.
"""

import dataclasses
from typing import Any, Mapping

from ttsr_jax.models import precision as precision_lib
from ttsr_jax.models import search_transfer
from ttsr_jax.models.ttsr import TTSR


class SpecError(ValueError):
  """A config value no spec can be made from; the message names the key."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """The generator (`config.model`): the architecture and how it computes."""

  n_feats: int = 64
  num_res_blocks: tuple[int, int, int, int] = (16, 16, 8, 4)
  res_scale: float = 1.0
  lte_reduce_lv3: bool = False  # Exp1-3's extra 256->64 conv at the end of the LTE
  search_chunk_size: int = 0  # LR positions per relevance block; 0 = the whole matrix
  search_mode: str = "exact"  # one of search_transfer.SEARCH_MODES
  precision: str = "exact"  # a policy of models/precision.py
  remat: bool = False

  def __post_init__(self):
    # Configs and JSON give lists; a tuple keeps the spec hashable and equal to its config.
    object.__setattr__(self, "num_res_blocks", tuple(self.num_res_blocks))

  def build(self, **how: Any) -> TTSR:
    """The generator module; `how` overrides fields that change how it computes, not what
    (e.g. `search_chunk_size` for large images)."""
    return TTSR(**{**dataclasses.asdict(self), **how})


@dataclasses.dataclass(frozen=True)
class LossSpec:
  """The generator's loss weights and the WGAN-GP settings (`config.loss`)."""

  rec_w: float
  per_w: float
  tpl_w: float
  adv_w: float
  tpl_use_S: bool
  tpl_type: str
  gan_k: int  # discriminator updates per generator step
  gp_lambda: float


@dataclasses.dataclass(frozen=True)
class OptimSpec:
  """Adam for the generator (MainNet and LTE rates) and the discriminator; StepLR
  (`config.optim`)."""

  lr: float
  lr_lte: float
  lr_dis: float
  beta1: float
  beta2: float
  eps: float
  decay: int  # main epochs per halving (StepLR step_size)
  gamma: float


@dataclasses.dataclass(frozen=True)
class TrainSpec:
  """What one training iteration needs: the networks, losses, optimisers and batch layout."""

  model: ModelSpec
  loss: LossSpec
  optim: OptimSpec
  train_crop_size: int  # LR patch side; the discriminator sees 4x this
  microbatches: int
  num_init_epochs: int  # warm-up epochs (reconstruction loss only, learning rate constant)
  seed: int


TPL_TYPES = ("l1", "l2")


def _fields(cls, values: Mapping[str, Any]) -> dict[str, Any]:
  return {f.name: values[f.name] for f in dataclasses.fields(cls)}


def check(config: Any) -> None:
  """Every check of the config's training and model values, each failing with one line that
  names the key and what it expects.

  Raises:
    SpecError: the first bad value.
  """
  model, loss = config.model, config.loss
  try:
    precision_lib.check(model.precision)
  except ValueError as e:
    raise SpecError(str(e)) from None
  blocks = tuple(model.num_res_blocks)
  if len(blocks) != 4 or min(blocks) < 1:
    raise SpecError(f"config.model.num_res_blocks {blocks}: expected four counts >= 1 (SFE and "
                    "the three stages)")
  for key, value, least in (("model.n_feats", model.n_feats, 1),
                            ("model.search_chunk_size", model.search_chunk_size, 0),
                            ("loss.gan_k", loss.gan_k, 0),
                            ("train_crop_size", config.train_crop_size, 1),
                            ("microbatches", config.microbatches, 1),
                            ("batch_size", config.batch_size, 1),
                            ("num_init_epochs", config.num_init_epochs, 0)):
    if value < least:
      raise SpecError(f"config.{key} {value}: expected an integer >= {least}")
  try:
    search_transfer.check_search_mode(model.search_mode, "config.model.search_mode")
  except ValueError as e:
    raise SpecError(str(e)) from None
  if loss.tpl_type not in TPL_TYPES:
    raise SpecError(f"config.loss.tpl_type {loss.tpl_type!r}: expected one of {TPL_TYPES}")
  if config.batch_size % config.microbatches:
    raise SpecError(f"config.batch_size {config.batch_size} is not divisible by "
                    f"config.microbatches {config.microbatches}")


def model_spec(model_config: Mapping[str, Any]) -> ModelSpec:
  """The `ModelSpec` of a `config.model` (fields it does not describe, such as the VGG19 weight
  file, are left out)."""
  return ModelSpec(**_fields(ModelSpec, model_config))


def train_spec(config: Any) -> TrainSpec:
  """The checked `TrainSpec` of an experiment config.

  Raises:
    SpecError: a bad value (`check`).
  """
  check(config)
  return TrainSpec(model=model_spec(config.model), loss=LossSpec(**_fields(LossSpec, config.loss)),
                   optim=OptimSpec(**_fields(OptimSpec, config.optim)),
                   train_crop_size=config.train_crop_size, microbatches=config.microbatches,
                   num_init_epochs=config.num_init_epochs, seed=config.seed)
