"""Checkpoints: the Orbax layout of a training run (retention, restore, the model-config check)
and the generator of either checkpoint kind for inference and export.

This module is the one owner of the layout:

  WORKDIR/checkpoints/<step>/state    ocp.args.StandardSave(step.TrainState): G and D parameters,
                                      both optimiser states, the step and the PRNG key
  WORKDIR/checkpoints/<step>/config   ocp.args.JsonSave(config.to_dict()): the whole experiment
                                      config; its "model" entry is what inference needs
  WORKDIR/checkpoints/<step>/metrics  the evaluation of that step, when it was evaluated (Orbax's
                                      own item); its "psnr" ranks the checkpoints

Retention: the `keep` latest checkpoints, plus the one with the best PSNR.

Inference reads a generator from either kind (`load_generator`): a reference state dict file
(`.pt`/`.pth`, needs torch, or `.npz` of the same keys; the architecture comes from its keys,
`convert.infer_model_config`, and res_scale, which a state dict does not record, from the caller)
or a directory of the layout above, of which only `state`'s `g_params` entry is read (a partial
restore) and `config`'s "model" entry. Such a PATH may be WORKDIR, WORKDIR/checkpoints (the
latest step) or one step directory.
"""

import importlib.util
import pathlib
from typing import Any, Optional, Union

import flax
from flax import traverse_util
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from ttsr_jax import convert
from ttsr_jax import sharding
from ttsr_jax import specs
from ttsr_jax import step as step_lib
from ttsr_jax.models.ttsr import ARCHITECTURE_KEYS, TTSR

PathLike = Union[str, pathlib.Path]
Params = dict[str, Any]

CHECKPOINT_DIR = "checkpoints"
BEST_METRIC = "psnr"
STATE_DICT_SUFFIXES = (".npz", ".pt", ".pth")
# Config fields that fix the parameters' shapes or the function they compute; a checkpoint
# written with other values cannot be resumed or evaluated under this config. (precision, remat and
# search_chunk_size change at most rounding; the VGG19 file only matters at initialisation.)
MODEL_FIELDS = tuple(f"model.{key}" for key in ARCHITECTURE_KEYS) + ("train_crop_size",)


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
  spec = specs.train_spec(config)
  vgg = jax.eval_shape(lambda key: step_lib.init_vgg_params(spec.model, key),
                       jax.random.PRNGKey(0))
  # The schedule (steps per epoch) does not change the state's structure.
  shapes = jax.eval_shape(lambda v: step_lib.create_train_state(spec, v, 1), vgg)
  replicated = sharding.replicated(mesh)
  return jax.tree_util.tree_map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), shapes)


def _restore_config(mngr: ocp.CheckpointManager, step: int) -> dict[str, Any]:
  return mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]


def stored_config(directory: PathLike, step: int) -> dict[str, Any]:
  """The experiment config saved with checkpoint `step` under `directory`, nested, as JSON."""
  with manager(directory, read_only=True) as mngr:
    return _restore_config(mngr, step)


def flat_config(config: dict[str, Any]) -> dict[str, Union[bool, int, float, str]]:
  """A config (`ConfigDict.to_dict()`, or `stored_config`) with dotted keys and the scalar types
  TensorBoard's hparams accept: anything else as its str(), sequences as tuples, so that a stored
  (JSON) config reads like the live one."""
  flat = traverse_util.flatten_dict(config, sep=".")
  return {key: value if isinstance(value, (bool, int, float, str))
          else str(tuple(value) if isinstance(value, list) else value)
          for key, value in flat.items()}


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
  stored = _restore_config(mngr, step)
  differences = model_differences(stored, config)
  if differences:
    raise CheckpointError(
        f"{where}: written by a run with another model config ({'; '.join(differences)}); "
        "use another --workdir, or set these fields as the checkpoint has them")
  target = abstract_train_state(config, mesh)
  state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
  return state["state"], mngr.metrics(step)


def _location(path: pathlib.Path) -> tuple[pathlib.Path, Optional[int]]:
  """(CheckpointManager directory, step or None for 'latest'/'best') for a workdir, its
  checkpoints directory or one step directory."""
  if (path / CHECKPOINT_DIR).is_dir():
    return path / CHECKPOINT_DIR, None
  if (path / "state").is_dir():
    if not path.name.isdigit():
      raise CheckpointError(f"{path}: a step directory must be named after its step number")
    return path.parent, int(path.name)
  return path, None


def locate(workdir: PathLike, checkpoint: str = "latest") -> tuple[pathlib.Path, int]:
  """(CheckpointManager directory, step) of a checkpoint.

  Args:
    workdir: the run's directory.
    checkpoint: 'latest' or 'best' (by PSNR) of WORKDIR/checkpoints, or a path: a workdir, its
      checkpoints directory (both mean their latest step) or one step directory.
  """
  if checkpoint in ("latest", "best"):
    directory, step = pathlib.Path(workdir) / CHECKPOINT_DIR, None
  else:
    directory, step = _location(pathlib.Path(checkpoint))
  if not directory.is_dir():
    raise CheckpointError(f"{directory}: no checkpoints directory; expected "
                          f"WORKDIR/{CHECKPOINT_DIR}/<step>/ written by training")
  if step is None:
    with manager(directory, read_only=True) as mngr:
      step = mngr.best_step() if checkpoint == "best" else mngr.latest_step()
    if step is None or not (directory / str(step) / "config").is_dir():
      what = "evaluated checkpoint (with metrics)" if checkpoint == "best" else "checkpoint"
      raise CheckpointError(f"{directory}: no {what} found; expected WORKDIR/{CHECKPOINT_DIR}/"
                            "<step>/{state,config} from training, or a reference state dict file "
                            f"({', '.join(STATE_DICT_SUFFIXES)})")
  return directory.absolute(), step  # Orbax refuses relative paths


# --- the generator of either checkpoint kind, for inference and export --------------------------

def abstract_generator_params(model_config: dict[str, Any]) -> Params:
  """Shapes and dtypes of the generator parameters for TTSR constructor arguments."""
  return convert.abstract_params(TTSR(**model_config), *step_lib.example_inputs())


def _format(value: Any) -> str:
  return "+".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


def describe(model_config: dict[str, Any]) -> str:
  """'n_feats 64, num_res_blocks 16+16+8+4, ...' for messages."""
  return ", ".join(f"{k} {_format(v)}" for k, v in model_config.items())


def _merge_flags(path: pathlib.Path, model_config: dict[str, Any],
                 flags: dict[str, Any]) -> dict[str, Any]:
  """Adds architecture flags the checkpoint does not record; rejects those it contradicts."""
  for key, value in flags.items():
    if value is not None and key in model_config and model_config[key] != value:
      raise CheckpointError(f"{path}: the checkpoint has {key}={_format(model_config[key])}, "
                            f"--{key} asks for {_format(value)} (a checkpoint of another model)")
  return {**{k: v for k, v in flags.items() if v is not None}, **model_config}


def _load_state_dict(path: pathlib.Path, flags: dict[str, Any]) -> tuple[Params, dict[str, Any]]:
  try:
    state_dict = convert.load_state_dict(path)
  except ImportError as e:
    raise CheckpointError(str(e)) from None
  except (OSError, ValueError) as e:  # a damaged archive, a pickle inside an .npz
    raise CheckpointError(f"{path}: not a readable state dict ({' '.join(str(e).split())})"
                          ) from None
  try:
    model_config = _merge_flags(path, convert.infer_model_config(state_dict), flags)
    params = convert.import_state_dict(state_dict, abstract_generator_params(model_config))
  except convert.StateDictError as e:
    raise CheckpointError(f"{path}: {e}") from None
  return params, model_config


def _check_shapes(where: pathlib.Path, params: Params, target: Params,
                  model_config: dict[str, Any]) -> None:
  # NumPy restores take the stored shapes whatever the target says, so a config that does not
  # describe the stored parameters would only fail deep inside the model.
  flat_target = flax.traverse_util.flatten_dict(target)
  for path, value in flax.traverse_util.flatten_dict(params).items():
    want = flat_target[path].shape
    if value.shape != want:
      raise CheckpointError(f"{where}: g_params/{'/'.join(path)} has shape {value.shape}, but the "
                            f"model config stored with it ({describe(model_config)}) needs {want}")


def _restore_generator(path: pathlib.Path,
                       flags: dict[str, Any]) -> tuple[Params, dict[str, Any]]:
  directory, step = locate(path, str(path))
  where = directory / str(step)
  with manager(directory, read_only=True) as mngr:
    config = _restore_config(mngr, step)
    stored = config.get("model") if isinstance(config, dict) else None
    if not isinstance(stored, dict) or any(k not in stored for k in ARCHITECTURE_KEYS):
      raise CheckpointError(f"{where / 'config'}: no model config with "
                            f"{', '.join(ARCHITECTURE_KEYS)} under 'model'")
    model_config = {k: stored[k] for k in ARCHITECTURE_KEYS}
    model_config["num_res_blocks"] = tuple(model_config["num_res_blocks"])
    model_config = _merge_flags(path, model_config, flags)
    target = abstract_generator_params(model_config)
    try:
      restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
          item={"g_params": target},
          restore_args=ocp.checkpoint_utils.construct_restore_args({"g_params": target}),
          partial_restore=True)))
    except (ValueError, KeyError, FileNotFoundError) as e:
      first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      raise CheckpointError(f"{where}: cannot restore state/g_params ({first_line})") from None
  params = restored["state"]["g_params"]
  _check_shapes(where, params, target, model_config)
  return params, model_config


def load_generator(path: PathLike, **flags: Any) -> tuple[Params, dict[str, Any]]:
  """Reads generator parameters and their model config from a checkpoint of either kind.

  Args:
    path: a reference state dict file (.pt/.pth/.npz) or an Orbax checkpoint (workdir,
      workdir/checkpoints or a step directory; layout in the module docstring).
    **flags: architecture values the caller expects (keys of ARCHITECTURE_KEYS, None = any): those
      the checkpoint records must agree, the others are added to the returned config.

  Returns:
    ({'LTE': ..., 'MainNet': ...} as NumPy arrays, TTSR constructor arguments).

  Raises:
    CheckpointError: no such checkpoint, an unreadable one, or one of another model.
  """
  path = pathlib.Path(path)
  if path.is_dir():
    return _restore_generator(path, flags)
  if not path.is_file():
    raise CheckpointError(f"{path}: checkpoint not found")
  if path.suffix not in STATE_DICT_SUFFIXES:
    raise CheckpointError(f"{path}: unknown checkpoint kind; expected an Orbax checkpoint "
                          f"directory or a reference state dict ({', '.join(STATE_DICT_SUFFIXES)})")
  return _load_state_dict(path, flags)


def export_generator(path: PathLike, out: PathLike, **flags: Any) -> dict[str, Any]:
  """Writes a checkpoint's generator as a reference-layout state dict (.npz, or .pt with torch).

  Returns the model config; res_scale is not part of a state dict, so a value other than 1 has to
  be passed again (`--res_scale`) when the export is used.
  """
  out = pathlib.Path(out)
  if out.suffix not in STATE_DICT_SUFFIXES:
    raise CheckpointError(f"{out}: unknown export format; expected "
                          f"{', '.join(STATE_DICT_SUFFIXES)}")
  # Checked before the checkpoint is read, which can take a while.
  if out.suffix != ".npz" and importlib.util.find_spec("torch") is None:
    raise CheckpointError(f"{out}: writing PyTorch files needs torch (pip install torch); "
                          "export to .npz instead")
  params, model_config = load_generator(path, **flags)
  state_dict = convert.export_state_dict(params, vgg_prefix="LTE")
  out.parent.mkdir(parents=True, exist_ok=True)
  if out.suffix == ".npz":
    with open(out, "wb") as f:  # np.savez on a name would append '.npz' to other suffixes
      np.savez(f, **state_dict)
  else:
    import torch  # pylint: disable=g-import-not-at-top  (optional dependency)
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state_dict.items()}, out)
  return model_config
