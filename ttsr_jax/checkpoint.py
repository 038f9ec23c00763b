"""Orbax checkpoints of a training run: layout, retention, restore, and the model-config check.

Layout (the contract with `ttsr_jax/infer.py`):

  WORKDIR/checkpoints/<step>/state    ocp.args.StandardSave(step.TrainState): G and D parameters,
                                      both optimiser states, the step and the PRNG key
  WORKDIR/checkpoints/<step>/config   ocp.args.JsonSave(config.to_dict()): the whole experiment
                                      config; its "model" entry is what inference needs
  WORKDIR/checkpoints/<step>/metrics  the evaluation of that step, when it was evaluated (Orbax's
                                      own item); its "psnr" ranks the checkpoints

Retention: the `keep` latest checkpoints, plus the one with the best PSNR.
"""

import pathlib
from typing import Any, Optional, Union

import jax
import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from ttsr_jax import infer
from ttsr_jax import sharding
from ttsr_jax import step as step_lib

PathLike = Union[str, pathlib.Path]

CHECKPOINT_DIR = "checkpoints"
BEST_METRIC = "psnr"
# Config fields that fix the parameters' shapes or the function they compute; a checkpoint
# written with other values cannot be resumed or evaluated under this config. (precision, remat and
# search_chunk_size change at most rounding; the VGG19 file only matters at initialisation.)
MODEL_FIELDS = tuple(f"model.{key}" for key in infer.ARCHITECTURE_KEYS) + ("train_crop_size",)


class CheckpointError(Exception):
  """A checkpoint that cannot be used here: missing, or written for another model."""


def _best_metric(metrics: dict[str, Any]) -> float:
  return metrics[BEST_METRIC]


def manager(directory: PathLike, keep: int = 1, read_only: bool = False) -> ocp.CheckpointManager:
  """A CheckpointManager over `directory` (WORKDIR/checkpoints) keeping the `keep` latest
  checkpoints and the best by PSNR."""
  if read_only:
    options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0,
                                           best_fn=_best_metric, best_mode="max")
  else:
    # max_to_keep would keep the `keep` best (not the latest) once metrics are given, so the
    # union of the two rules is spelled out as a preservation policy.
    policy = checkpoint_managers.AnyPreservationPolicy([
        checkpoint_managers.LatestN(n=keep),
        checkpoint_managers.BestN(get_metric_fn=_best_metric, n=1,
                                  keep_checkpoints_without_metrics=False),
    ])
    # Synchronous: the training step donates the state's buffers to the next step, which must
    # not overwrite them while a background save reads them. A save takes seconds and happens
    # once every few epochs.
    options = ocp.CheckpointManagerOptions(best_fn=_best_metric, best_mode="max",
                                           preservation_policy=policy,
                                           enable_async_checkpointing=False)
  return ocp.CheckpointManager(pathlib.Path(directory).absolute(), options=options)


def save(mngr: ocp.CheckpointManager, step: int, state: step_lib.TrainState,
         config: ml_collections.ConfigDict, metrics: Optional[dict[str, float]] = None) -> None:
  """Saves the state and config of `step`, and its evaluation `metrics` if it was evaluated."""
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          config=ocp.args.JsonSave(config.to_dict())),
            metrics=metrics, force=True)


def abstract_train_state(config: ml_collections.ConfigDict,
                         mesh: jax.sharding.Mesh) -> step_lib.TrainState:
  """Shapes, dtypes and shardings (replicated over `mesh`) of a TrainState for `config`.

  Restoring onto this target places the state on whatever devices `mesh` has, whatever layout
  wrote it, and brings optimiser states back as optax's types rather than plain dicts.
  """
  vgg = jax.eval_shape(lambda key: step_lib.init_vgg_params(config, key), jax.random.PRNGKey(0))
  # The schedule (steps per epoch) does not change the state's structure.
  shapes = jax.eval_shape(lambda v: step_lib.create_train_state(config, v, 1), vgg)
  replicated = sharding.replicated(mesh)
  return jax.tree_util.tree_map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), shapes)


def _lookup(tree: dict[str, Any], field: str) -> Any:
  for key in field.split("."):
    tree = tree.get(key) if isinstance(tree, dict) else None
  return list(tree) if isinstance(tree, (list, tuple)) else tree


def model_differences(stored: dict[str, Any], config: ml_collections.ConfigDict) -> list[str]:
  """'field: checkpoint X, this config Y' for each of MODEL_FIELDS that differs."""
  current = config.to_dict()
  return [f"{field}: checkpoint {_lookup(stored, field)}, this config {_lookup(current, field)}"
          for field in MODEL_FIELDS if _lookup(stored, field) != _lookup(current, field)]


def restore(mngr: ocp.CheckpointManager, step: int, config: ml_collections.ConfigDict,
            mesh: jax.sharding.Mesh) -> tuple[step_lib.TrainState, Optional[dict[str, float]]]:
  """The TrainState of `step`, replicated over `mesh`, and that step's evaluation metrics.

  Raises:
    CheckpointError: the checkpoint was written with another model config (named fields).
  """
  where = pathlib.Path(mngr.directory) / str(step)
  stored = mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
  differences = model_differences(stored, config)
  if differences:
    raise CheckpointError(
        f"{where}: written by a run with another model config ({'; '.join(differences)}); "
        "use another --workdir, or set these fields as the checkpoint has them")
  target = abstract_train_state(config, mesh)
  state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
  return state["state"], mngr.metrics(step)


def locate(workdir: PathLike, checkpoint: str = "latest") -> tuple[pathlib.Path, int]:
  """(CheckpointManager directory, step) for an evaluation.

  Args:
    workdir: the run's directory.
    checkpoint: 'latest' or 'best' (by PSNR) of WORKDIR/checkpoints, or a path: a workdir, its
      checkpoints directory (both mean their latest step) or one step directory.
  """
  if checkpoint in ("latest", "best"):
    directory, step = pathlib.Path(workdir) / CHECKPOINT_DIR, None
  else:
    path = pathlib.Path(checkpoint)
    if (path / CHECKPOINT_DIR).is_dir():
      directory, step = path / CHECKPOINT_DIR, None
    elif (path / "state").is_dir() and path.name.isdigit():
      directory, step = path.parent, int(path.name)
    else:
      directory, step = path, None
  if not directory.is_dir():
    raise CheckpointError(f"{directory}: no checkpoints directory; expected "
                          f"WORKDIR/{CHECKPOINT_DIR}/<step>/ written by training")
  if step is None:
    with manager(directory, read_only=True) as mngr:
      step = mngr.best_step() if checkpoint == "best" else mngr.latest_step()
    if step is None:
      what = "evaluated checkpoint (with metrics)" if checkpoint == "best" else "checkpoint"
      raise CheckpointError(f"{directory}: no {what} found")
  return directory, step
