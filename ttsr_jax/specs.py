"""Frozen, typed views of an experiment's config, made and checked once at an entry point.

The `ml_collections.ConfigDict` is what a person edits (configs/*.py, `--config.x=...` flags).
The commands turn it into these specs with `model_spec`, `train_spec`, `eval_spec` and `run_spec`
(a training run: its schedule, files, train and eval specs, and the whole config as JSON for its
checkpoints); all but the first run every check (`check`), so a bad value fails with one line
naming its key before anything compiles. The libraries below take specs or plain values, never
the ConfigDict.
"""

import dataclasses
import functools
import json
from typing import Any, Mapping, Optional

from data_pipeline import testsets

from ttsr_jax import metrics
from ttsr_jax.models import precision as precision_lib
from ttsr_jax.models import search_transfer
from ttsr_jax.models.ttsr import ARCHITECTURE_KEYS, TTSR


class SpecError(ValueError):
  """A config value no spec can be made from; the message names the key."""


def format_value(value: Any) -> str:
  """A config value as messages show it: sequences joined by '+' (16+16+8+4)."""
  return "+".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


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

  def architecture(self) -> dict[str, Any]:
    """The fields that fix the parameters' shapes or the function they compute."""
    return {key: getattr(self, key) for key in ARCHITECTURE_KEYS}

  def describe(self) -> str:
    """'n_feats 64, num_res_blocks 16+16+8+4, ...' (the architecture) for messages."""
    return ", ".join(f"{k} {format_value(v)}" for k, v in self.architecture().items())

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
  microbatches: int  # 0: picked per machine (`sharding.resolve_microbatches`)
  num_init_epochs: int  # warm-up epochs (reconstruction loss only, learning rate constant)
  seed: int


@dataclasses.dataclass(frozen=True)
class EvalSpec:
  """The test sets, their references and the metric (`config.eval`), and the CUFED root that
  holds CUFED5 (`config.data.cufed_dir`)."""

  cufed_dir: str
  sets: tuple[str, ...]  # of TEST_SETS, in evaluation order
  test_dir: str  # holds the other sets
  levels: tuple[int, ...]  # CUFED5 reference levels, each its own protocol
  multi_reference: bool  # CUFED5 with its five references stitched
  sun80_reference: str
  manga109_reference: str
  reference_seed: int
  sizes: str  # sides that are not multiples of 4: 'crop' or 'pad'
  protocol: str  # the metric: 'ttsr' or 'mmagic'
  crop_border: Optional[int]  # 'mmagic' only
  y_channel: bool  # 'mmagic' only
  num_images: int  # first N images of each protocol; 0 = all
  num_image_grids: int
  search_chunk_size: int
  search_mode: str

  def __post_init__(self):
    object.__setattr__(self, "sets", tuple(self.sets))
    object.__setattr__(self, "levels", tuple(self.levels))

  def settings(self) -> dict[str, Any]:
    """The `config.eval` values, as an evaluation record keeps them."""
    values = dataclasses.asdict(self)
    del values["cufed_dir"]
    return {**values, "sets": ",".join(self.sets)}


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """A training run (`train.train_and_evaluate`): what one iteration needs (`train`), the
  evaluation, the schedule and bookkeeping, the files it reads, and the whole config it stores
  with each checkpoint."""

  train: TrainSpec
  evaluation: EvalSpec
  batch_size: int  # global, over all devices
  num_epochs: int  # main epochs, after `train.num_init_epochs` warm-up epochs
  eval_every: int  # main epochs between evaluations (also after the last); 0 = never
  checkpoint_every: int  # epochs between checkpoints (also after evaluations and the last)
  keep_checkpoints: int  # latest checkpoints kept, besides the best by PSNR
  log_every: int  # steps averaged per logged value
  profile_steps: int  # steps traced by jax.profiler; 0 = off
  cufed_dir: str  # the CUFED root: train/input, train/ref (and test/CUFED5)
  data_dir: Optional[str]  # the prepared TFDS dataset; None = CUFED_DIR/tfds
  vgg19_weights: Optional[str]  # converted VGG19 .npz; None = random (demo and tests only)
  # A JSON string rather than a dict, so that the spec cannot change after it is made.
  config_json: str

  def config(self) -> dict[str, Any]:
    """The whole experiment config (`ConfigDict.to_dict()`) as the checkpoints store it: plain
    nested JSON values, a fresh copy on each call."""
    return json.loads(self.config_json)


TPL_TYPES = ("l1", "l2")
TEST_SETS = ("cufed5", "sun80", "urban100", "manga109", "wrsr")


def _fields(cls, values: Mapping[str, Any]) -> dict[str, Any]:
  return {f.name: values[f.name] for f in dataclasses.fields(cls)}


def parse_sets(text: str) -> tuple[str, ...]:
  """The sets of `config.eval.sets` ('cufed5,sun80'), in order.

  Raises:
    SpecError: an unknown or repeated name.
  """
  sets = tuple(part.strip().lower() for part in text.split(",") if part.strip())
  if not sets or any(s not in TEST_SETS for s in sets) or len(set(sets)) < len(sets):
    raise SpecError(f"config.eval.sets {text!r}: expected distinct comma-separated names from "
                    f"{','.join(TEST_SETS)}")
  return sets


def _check_eval(e: Any) -> None:
  sets = parse_sets(e.sets)
  for level in e.levels:
    if not 1 <= level <= 5:
      raise SpecError(f"config.eval.levels: level {level} is not in 1..5")
  if e.protocol not in metrics.PROTOCOLS:
    raise SpecError(f"config.eval.protocol {e.protocol!r}: expected one of {metrics.PROTOCOLS}")
  if e.protocol == "ttsr" and (e.crop_border is not None or e.y_channel):
    raise SpecError("config.eval.crop_border and y_channel apply to protocol 'mmagic' only "
                    "('ttsr' is the Y channel with no border shaved); leave them None, False")
  if e.crop_border is not None and e.crop_border < 0:
    raise SpecError(f"config.eval.crop_border {e.crop_border}: expected >= 0")
  for key, choices in (("sun80_reference", testsets.SUN80_CHOICES),
                       ("manga109_reference", testsets.MANGA109_CHOICES),
                       ("sizes", testsets.SIZE_CHOICES)):
    if e[key] not in choices:
      raise SpecError(f"config.eval.{key} {e[key]!r}: expected one of {choices}")
  if sets == ("cufed5",) and not e.levels and not e.multi_reference:
    raise SpecError("config.eval: no protocol to evaluate; set levels or multi_reference")
  try:
    search_transfer.check_search_mode(e.search_mode, "config.eval.search_mode")
  except ValueError as error:
    raise SpecError(str(error)) from None


# Integer config keys (dotted paths) and the least value each may take.
_INTEGER_BOUNDS = (
    ("model.n_feats", 1), ("model.search_chunk_size", 0), ("loss.gan_k", 0),
    ("train_crop_size", 1), ("microbatches", 0), ("batch_size", 1), ("num_init_epochs", 0),
    ("num_epochs", 0), ("eval_every", 0), ("checkpoint_every", 1), ("keep_checkpoints", 1),
    ("log_every", 1), ("profile_steps", 0), ("eval.num_images", 0), ("eval.num_image_grids", 0),
    ("eval.search_chunk_size", 0),
)


def check(config: Any) -> None:
  """Every check of the config's model, training and evaluation values, each failing with one
  line that names the key and what it expects.

  Raises:
    SpecError: the first bad value.
  """
  _check_eval(config.eval)
  model, loss = config.model, config.loss
  try:
    precision_lib.check(model.precision)
  except ValueError as e:
    raise SpecError(str(e)) from None
  blocks = tuple(model.num_res_blocks)
  if len(blocks) != 4 or min(blocks) < 1:
    raise SpecError(f"config.model.num_res_blocks {blocks}: expected four counts >= 1 (SFE and "
                    "the three stages)")
  for key, least in _INTEGER_BOUNDS:
    value = functools.reduce(lambda node, name: node[name], key.split("."), config)
    if value < least:
      raise SpecError(f"config.{key} {value}: expected an integer >= {least}")
  try:
    search_transfer.check_search_mode(model.search_mode, "config.model.search_mode")
  except ValueError as e:
    raise SpecError(str(e)) from None
  if loss.tpl_type not in TPL_TYPES:
    raise SpecError(f"config.loss.tpl_type {loss.tpl_type!r}: expected one of {TPL_TYPES}")
  if config.microbatches and config.batch_size % config.microbatches:
    raise SpecError(f"config.batch_size {config.batch_size} is not divisible by "
                    f"config.microbatches {config.microbatches}")


def model_spec(model_config: Mapping[str, Any]) -> ModelSpec:
  """The `ModelSpec` of a `config.model` (fields it does not describe, such as the VGG19 weight
  file, are left out)."""
  return ModelSpec(**_fields(ModelSpec, model_config))


def _train_spec(config: Any) -> TrainSpec:
  return TrainSpec(model=model_spec(config.model), loss=LossSpec(**_fields(LossSpec, config.loss)),
                   optim=OptimSpec(**_fields(OptimSpec, config.optim)),
                   train_crop_size=config.train_crop_size, microbatches=config.microbatches,
                   num_init_epochs=config.num_init_epochs, seed=config.seed)


def _eval_spec(config: Any) -> EvalSpec:
  values = _fields(EvalSpec, {**config.eval, "cufed_dir": config.data.cufed_dir})
  return EvalSpec(**{**values, "sets": parse_sets(config.eval.sets)})


def train_spec(config: Any) -> TrainSpec:
  """The checked `TrainSpec` of an experiment config.

  Raises:
    SpecError: a bad value (`check`).
  """
  check(config)
  return _train_spec(config)


def eval_spec(config: Any) -> EvalSpec:
  """The checked `EvalSpec` of an experiment config.

  Raises:
    SpecError: a bad value (`check`).
  """
  check(config)
  return _eval_spec(config)


def run_spec(config: Any) -> RunSpec:
  """The checked `RunSpec` of an experiment config.

  Raises:
    SpecError: a bad value (`check`).
  """
  check(config)
  return RunSpec(train=_train_spec(config), evaluation=_eval_spec(config),
                 batch_size=config.batch_size, num_epochs=config.num_epochs,
                 eval_every=config.eval_every, checkpoint_every=config.checkpoint_every,
                 keep_checkpoints=config.keep_checkpoints, log_every=config.log_every,
                 profile_steps=config.profile_steps, cufed_dir=config.data.cufed_dir,
                 data_dir=config.data.data_dir, vgg19_weights=config.model.vgg19_weights,
                 config_json=json.dumps(config.to_dict()))
