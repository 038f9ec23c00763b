"""The checkpoints of a training run: the Orbax layout, retention, the content check, restore and
the model-config check.

This module is the one owner of the layout:

  WORKDIR/checkpoints/<step>/state    ocp.args.StandardSave(step.TrainState): G and D parameters,
                                      both optimiser states, the step and the PRNG key
  WORKDIR/checkpoints/<step>/config   ocp.args.JsonSave(RunSpec.config()): the whole experiment
                                      config; its "model" entry is what inference needs
  WORKDIR/checkpoints/<step>/metrics  the evaluation of that step, when it was evaluated (Orbax's
                                      own item); its "psnr" ranks the checkpoints
  WORKDIR/checkpoints/<step>/manifest.json  size and SHA-256 of every other file of the step,
                                      written after Orbax's commit and checked before a restore
  WORKDIR/checkpoints/<step>.damaged  a step that failed its check or its restore, moved aside by
                                      training (never deleted, never a step to Orbax again)

Retention: the `keep` latest checkpoints, plus the one with the best PSNR.

A damaged checkpoint (`DamagedCheckpointError`) is one whose files differ from its manifest, or
one without a manifest (written before manifests existed, or killed between Orbax's commit and
the manifest) that Orbax cannot restore. Training resumes from the latest intact step
(`restore_latest_intact`); the commands that read a checkpoint stop with one line naming the
step, the file, the reason and the newest intact step of the directory.

Evaluation and inference read only the generator's parameters of a step
(`read_generator_params`); `ttsr_jax/generators.py` reads them for inference and export.
"""

import contextlib
import hashlib
import json
import logging as logging_lib
import os
import pathlib
import sys
from typing import Any, Optional, Union

from absl import logging
from flax import traverse_util
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from ttsr_jax import sharding
from ttsr_jax import specs
from ttsr_jax import step as step_lib
from ttsr_jax.models.ttsr import ARCHITECTURE_KEYS

PathLike = Union[str, pathlib.Path]
Params = dict[str, Any]

CHECKPOINT_DIR = "checkpoints"
BEST_METRIC = "psnr"
MANIFEST = "manifest.json"
DAMAGED_SUFFIX = ".damaged"
# Config fields that fix the parameters' shapes or the function they compute; a checkpoint
# written with other values cannot be resumed or evaluated under this config. (precision, remat and
# search_chunk_size change at most rounding; the VGG19 file only matters at initialisation.)
MODEL_FIELDS = tuple(f"model.{key}" for key in ARCHITECTURE_KEYS) + ("train_crop_size",)


class CheckpointError(Exception):
  """A checkpoint that cannot be used here: missing, damaged, or written for another model."""


class DamagedCheckpointError(CheckpointError):
  """A checkpoint whose files differ from its manifest, or without a manifest and unreadable."""

  def __init__(self, step_dir: pathlib.Path, file: str, reason: str, note: str = ""):
    self.step_dir, self.file, self.reason = step_dir, file, reason
    super().__init__(f"{step_dir}: damaged checkpoint of step {step_dir.name}: {file}: {reason}"
                     + (f"; {note}" if note else ""))

  def naming_newest_intact(self) -> "DamagedCheckpointError":
    """This error, naming the newest other step of the same directory that is intact."""
    intact = newest_intact_step(self.step_dir.parent, excluding=int(self.step_dir.name))
    note = (f"the newest intact checkpoint is {self.step_dir.parent / str(intact)} (step {intact})"
            if intact is not None else "no other checkpoint of this directory is intact")
    return DamagedCheckpointError(self.step_dir, self.file, self.reason, note)


# --- the content check ---------------------------------------------------------------------------

def _file_record(path: pathlib.Path) -> dict[str, Union[int, str]]:
  with open(path, "rb") as f:
    return {"bytes": os.fstat(f.fileno()).st_size,
            "sha256": hashlib.file_digest(f, "sha256").hexdigest()}


def write_manifest(step_dir: PathLike) -> None:
  """Records the size and SHA-256 of every file of a committed step in its MANIFEST.

  Written whole under another name and renamed, so that a manifest is either complete or absent.
  """
  step_dir = pathlib.Path(step_dir)
  files = {path.relative_to(step_dir).as_posix(): _file_record(path)
           for path in sorted(step_dir.rglob("*")) if path.is_file() and path.name != MANIFEST}
  partial = step_dir / (MANIFEST + ".tmp")
  with open(partial, "w") as f:
    json.dump({"files": files}, f, indent=1)
    f.flush()
    os.fsync(f.fileno())
  os.replace(partial, step_dir / MANIFEST)


def has_manifest(step_dir: PathLike) -> bool:
  return (pathlib.Path(step_dir) / MANIFEST).is_file()


def verify(step_dir: PathLike, items: Optional[tuple[str, ...]] = None) -> None:
  """Checks the files of a step (only those of the top-level `items`, if given) against its
  manifest. A step without one (written before manifests existed) passes.

  Raises:
    DamagedCheckpointError: a file is missing or differs in size or content, or the manifest is
      unreadable.
  """
  step_dir = pathlib.Path(step_dir)
  if not has_manifest(step_dir):
    return
  try:
    files = json.loads((step_dir / MANIFEST).read_text())["files"]
    records = {name: (int(r["bytes"]), str(r["sha256"])) for name, r in files.items()}
  except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
    raise DamagedCheckpointError(step_dir, MANIFEST, f"unreadable ({_first_line(e)})") from None
  for name, (size, digest) in records.items():
    if items is not None and name.split("/")[0] not in items:
      continue
    path = step_dir / name
    if not path.is_file():
      raise DamagedCheckpointError(step_dir, name, "missing")
    found = _file_record(path)
    if found["bytes"] != size:
      raise DamagedCheckpointError(step_dir, name,
                                   f"{found['bytes']} bytes, its manifest says {size}")
    if found["sha256"] != digest:
      raise DamagedCheckpointError(step_dir, name, f"{size} bytes as its manifest says, but "
                                   "another SHA-256 (changed content)")


def newest_intact_step(directory: PathLike, excluding: Optional[int] = None) -> Optional[int]:
  """The newest step under `directory`, other than `excluding`, that passes `verify`."""
  steps = sorted((int(p.name) for p in pathlib.Path(directory).iterdir()
                  if p.name.isdigit() and p.is_dir() and int(p.name) != excluding), reverse=True)
  for step in steps:
    try:
      verify(pathlib.Path(directory) / str(step))
    except DamagedCheckpointError:
      continue
    return step
  return None


def move_aside(step_dir: PathLike) -> pathlib.Path:
  """Renames a damaged step to <step>.damaged (.damaged-2, ... if taken), which Orbax does not
  take for a step; returns the new path."""
  step_dir = pathlib.Path(step_dir)
  target, n = step_dir.with_name(step_dir.name + DAMAGED_SUFFIX), 1
  while target.exists():
    n += 1
    target = step_dir.with_name(f"{step_dir.name}{DAMAGED_SUFFIX}-{n}")
  os.rename(step_dir, target)
  return target


def _first_line(error: BaseException) -> str:
  text = str(error).strip()
  return text.splitlines()[0] if text else type(error).__name__


def _root_cause(error: BaseException) -> str:
  """The first line of the innermost exception behind `error` (Orbax wraps TensorStore's)."""
  while error.__cause__ is not None:
    error = error.__cause__
  return _first_line(error)


_previous_unraisablehook = sys.unraisablehook


def _drop_late_tensorstore_callbacks(unraisable: Any) -> None:
  tb = unraisable.exc_traceback
  if not (isinstance(unraisable.exc_value, RuntimeError)
          and str(unraisable.exc_value) == "Event loop is closed"
          and tb is not None and tb.tb_frame.f_code.co_name == "call_soon_threadsafe"):
    _previous_unraisablehook(unraisable)


def _install_late_callback_filter() -> None:
  """Silences the TensorStore reads and writes that finish after a failed Orbax restore or save.

  Orbax runs them on an event loop that it closes as soon as the first one fails; TensorStore
  still completes the others, and each completion, scheduling its callback on that closed loop
  from a native thread, raises 'Event loop is closed' into sys.unraisablehook: a traceback per
  file, hundreds, after the one error that matters. Only those are dropped (anything else goes to
  the previous hook), and the filter is in place before Orbax runs, as the completions can come
  before the error reaches the caller.
  """
  global _previous_unraisablehook
  if sys.unraisablehook is not _drop_late_tensorstore_callbacks:
    _previous_unraisablehook = sys.unraisablehook
    sys.unraisablehook = _drop_late_tensorstore_callbacks


class _AbandonedWritesFilter(logging_lib.Filter):
  """Drops asyncio's 'exception was never retrieved' records of TensorStore writes that a failed
  save abandoned. Orbax stops a save at its first failing write; the other writes' futures hold
  errors of the same kind and are reported whenever the garbage collector reaches them (dozens of
  tracebacks, before or after the one line that matters), so the filter is in place before any
  save."""

  def filter(self, record: logging_lib.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    return not ("exception was never retrieved" in record.getMessage()
                and isinstance(error, ValueError) and "Error writing" in str(error))


def _silence_abandoned_writes() -> None:
  asyncio_logger = logging_lib.getLogger("asyncio")
  if not any(isinstance(f, _AbandonedWritesFilter) for f in asyncio_logger.filters):
    asyncio_logger.addFilter(_AbandonedWritesFilter())


def _restore_item(mngr: ocp.CheckpointManager, step: int, item: str, args: Any) -> Any:
  """mngr.restore of one item (checked by the caller); a failure is one line."""
  step_dir = pathlib.Path(mngr.directory) / str(step)
  try:
    return mngr.restore(step, args=ocp.args.Composite(**{item: args}))[item]
  except Exception as e:  # pylint: disable=broad-exception-caught  (Orbax re-raises TensorStore's
    # read errors as a bare Exception; what follows names the cause in one line either way)
    if has_manifest(step_dir):
      # The files are those that were written: other code or another config, not damage.
      raise CheckpointError(f"{step_dir}: cannot restore {item}, although its files match their "
                            f"manifest ({_root_cause(e)})") from None
    raise DamagedCheckpointError(step_dir, item,
                                 f"cannot be restored ({_root_cause(e)})") from None


@contextlib.contextmanager
def _naming_newest_intact():
  """For commands that read one checkpoint: a damaged one also names the step to use instead."""
  try:
    yield
  except DamagedCheckpointError as e:
    raise e.naming_newest_intact() from None


def _best_metric(metrics: dict[str, Any]) -> float:
  return metrics[BEST_METRIC]


def _unreadable_metrics(directory: pathlib.Path) -> Optional[DamagedCheckpointError]:
  """The first step under `directory` whose metrics file is not JSON (Orbax reads every step's
  when a manager opens, and fails on such a file)."""
  name = ocp.checkpoint_manager.METRIC_ITEM_NAME
  for step_dir in sorted(p for p in directory.iterdir() if p.name.isdigit()):
    path = step_dir / name / name
    try:
      if path.is_file():
        json.loads(path.read_text())
    except (OSError, ValueError) as e:
      return DamagedCheckpointError(step_dir, f"{name}/{name}", f"unreadable ({_first_line(e)})")
  return None


def _set_aside(error: DamagedCheckpointError) -> None:
  """Moves a damaged step aside (process 0, the others wait) and says so in one warning."""
  moved = move_aside(error.step_dir) if jax.process_index() == 0 else None
  ocp.multihost.sync_global_processes(f"ttsr_moved_aside_{error.step_dir.name}")
  logging.warning("%s; %s, trying the previous checkpoint", error,
                  f"moved it aside to {moved}" if moved else "process 0 moves it aside")


def manager(directory: PathLike, keep: int = 1, read_only: bool = False) -> ocp.CheckpointManager:
  """A CheckpointManager over `directory` (WORKDIR/checkpoints) keeping the `keep` latest
  checkpoints and the best by PSNR.

  A step whose metrics are not JSON stops Orbax from opening the directory: a manager that writes
  (training's) moves such a step aside (`_set_aside`), a read-only one raises
  DamagedCheckpointError.
  """
  _install_late_callback_filter()
  _silence_abandoned_writes()
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
  directory = pathlib.Path(directory).absolute()
  while True:
    try:
      return ocp.CheckpointManager(directory, options=options)
    except ValueError:  # json.JSONDecodeError, among others
      damaged = _unreadable_metrics(directory)
      if damaged is None:
        raise
      if read_only:
        raise damaged.naming_newest_intact() from None
      _set_aside(damaged)


def save(mngr: ocp.CheckpointManager, step: int, state: step_lib.TrainState,
         config: dict[str, Any], metrics: Optional[dict[str, float]] = None) -> None:
  """Saves the state and the whole experiment `config` (`RunSpec.config()`) of `step`, and its
  evaluation `metrics` if it was evaluated, then the step's manifest.

  Raises:
    CheckpointError: the save failed (a full disk, no permission). Orbax writes into a temporary
      directory and removes old steps only after the commit, so the earlier checkpoints are as
      they were.
  """
  step_dir = pathlib.Path(mngr.directory) / str(step)
  try:
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                            config=ocp.args.JsonSave(config)),
              metrics=metrics, force=True)
    # After the save returns, every process's files are committed (Orbax's barrier).
    if jax.process_index() == 0:
      write_manifest(step_dir)
  except (OSError, ValueError) as e:  # TensorStore's write errors are ValueErrors
    kept = ", ".join(str(s) for s in mngr.all_steps() if s != step) or "none"
    raise CheckpointError(
        f"{step_dir}: cannot save the checkpoint of step {step} ({_root_cause(e)}); the earlier "
        f"checkpoints (steps: {kept}) are as they were: free space or fix the permissions of "
        f"{mngr.directory}, then relaunch to resume from the latest") from None


def abstract_train_state(spec: specs.TrainSpec, mesh: jax.sharding.Mesh) -> step_lib.TrainState:
  """Shapes, dtypes and shardings (replicated over `mesh`) of a TrainState for `spec`.

  Restoring onto this target places the state on whatever devices `mesh` has, whatever layout
  wrote it, and brings optimiser states back as optax's types rather than plain dicts.
  """
  vgg = jax.eval_shape(lambda key: step_lib.init_vgg_params(spec.model, key),
                       jax.random.PRNGKey(0))
  # The schedule (steps per epoch) does not change the state's structure.
  shapes = jax.eval_shape(lambda v: step_lib.create_train_state(spec, v, 1), vgg)
  replicated = sharding.replicated(mesh)
  return jax.tree_util.tree_map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), shapes)


def _restore_config(mngr: ocp.CheckpointManager, step: int) -> dict[str, Any]:
  return _restore_item(mngr, step, "config", ocp.args.JsonRestore())


def stored_config(directory: PathLike, step: int) -> dict[str, Any]:
  """The experiment config saved with checkpoint `step` under `directory`, nested, as JSON.

  Raises:
    DamagedCheckpointError: the config's files are damaged (naming the newest intact step).
  """
  with _naming_newest_intact(), manager(directory, read_only=True) as mngr:
    verify(pathlib.Path(directory) / str(step), ("config",))
    return _restore_config(mngr, step)


def flat_config(config: dict[str, Any]) -> dict[str, Union[bool, int, float, str]]:
  """A config (`RunSpec.config()`, or `stored_config`) with dotted keys and the scalar types
  TensorBoard's hparams accept: anything else as its str(), sequences as tuples, as configs/ write
  them."""
  flat = traverse_util.flatten_dict(config, sep=".")
  return {key: value if isinstance(value, (bool, int, float, str))
          else str(tuple(value) if isinstance(value, list) else value)
          for key, value in flat.items()}


def _lookup(tree: dict[str, Any], field: str) -> Any:
  for key in field.split("."):
    tree = tree.get(key) if isinstance(tree, dict) else None
  return list(tree) if isinstance(tree, (list, tuple)) else tree


def model_differences(stored: dict[str, Any], spec: specs.TrainSpec) -> list[str]:
  """'field: checkpoint X, this config Y' for each of MODEL_FIELDS that differs between a stored
  config and `spec`."""
  current = {"model": spec.model.architecture(), "train_crop_size": spec.train_crop_size}
  return [f"{field}: checkpoint {_lookup(stored, field)}, this config {_lookup(current, field)}"
          for field in MODEL_FIELDS if _lookup(stored, field) != _lookup(current, field)]


def _check_model(where: pathlib.Path, stored: dict[str, Any], spec: specs.TrainSpec) -> None:
  differences = model_differences(stored, spec)
  if differences:
    raise CheckpointError(
        f"{where}: written by a run with another model config ({'; '.join(differences)}); "
        "use another --workdir, or set these fields as the checkpoint has them")


def restore(mngr: ocp.CheckpointManager, step: int, spec: specs.TrainSpec,
            mesh: jax.sharding.Mesh) -> tuple[step_lib.TrainState, Optional[dict[str, float]]]:
  """The TrainState of `step`, replicated over `mesh`, and that step's evaluation metrics.

  Raises:
    DamagedCheckpointError: the step's files differ from its manifest, or it has none and does
      not restore.
    CheckpointError: the checkpoint was written with another model config than `spec`'s (named
      fields), or its intact files do not restore (other code).
  """
  where = pathlib.Path(mngr.directory) / str(step)
  verify(where)
  _check_model(where, _restore_config(mngr, step), spec)
  target = abstract_train_state(spec, mesh)
  state = _restore_item(mngr, step, "state", ocp.args.StandardRestore(target))
  return state, mngr.metrics(step)


def _check_shapes(where: pathlib.Path, params: Params, target: Params,
                  stored: dict[str, Any]) -> None:
  # NumPy restores take the stored shapes whatever the target says, so a model that does not
  # describe the stored parameters would only fail deep inside it.
  flat_target = traverse_util.flatten_dict(target)
  for path, value in traverse_util.flatten_dict(params).items():
    want = flat_target[path].shape
    if value.shape != want:
      described = specs.ModelSpec(**{key: _lookup(stored, f"model.{key}")
                                     for key in ARCHITECTURE_KEYS}).describe()
      raise CheckpointError(f"{where}: g_params/{'/'.join(path)} has shape {value.shape}, but "
                            f"the model config stored with it ({described}) needs {want}")


def read_generator_params(directory: PathLike, step: int, target: Params,
                          spec: Optional[specs.TrainSpec] = None) -> Params:
  """Only the generator's parameters (`state`'s g_params) of checkpoint `step` under `directory`,
  as NumPy arrays: a partial restore that reads neither the discriminator nor the optimisers.

  Args:
    directory, step: as `locate` gives them.
    target: the parameters' shapes and dtypes (`generators.abstract_params`).
    spec: when given, the checkpoint must have been written with its model (MODEL_FIELDS).

  Raises:
    DamagedCheckpointError: the state's or config's files are damaged (naming the newest intact
      step of the directory).
    CheckpointError: stored shapes other than `target`'s, or a checkpoint of another model.
  """
  where = pathlib.Path(directory) / str(step)
  with _naming_newest_intact(), manager(directory, read_only=True) as mngr:
    verify(where, ("state", "config"))
    stored = _restore_config(mngr, step)
    if spec is not None:
      _check_model(where, stored, spec)
    restored = _restore_item(mngr, step, "state", ocp.args.PyTreeRestore(
        item={"g_params": target},
        restore_args=ocp.checkpoint_utils.construct_restore_args({"g_params": target}),
        partial_restore=True))
  _check_shapes(where, restored["g_params"], target, stored)
  return restored["g_params"]


def restore_latest_intact(
    mngr: ocp.CheckpointManager, spec: specs.TrainSpec, mesh: jax.sharding.Mesh
) -> Optional[tuple[step_lib.TrainState, Optional[dict[str, float]]]]:
  """`restore` of the latest checkpoint that is not damaged; None when there is none at all.

  Each damaged checkpoint on the way is reported in one warning (step, file, reason) and moved
  aside (`move_aside`), so that no later run takes it for the latest.

  Raises:
    CheckpointError: every checkpoint was damaged (all moved aside), or one of another model.
  """
  damaged = []
  while (step := mngr.latest_step()) is not None:
    try:
      return restore(mngr, step, spec, mesh)
    except DamagedCheckpointError as e:
      damaged.append(step)
      _set_aside(e)
      mngr.reload()
  if damaged:
    raise CheckpointError(
        f"{mngr.directory}: no intact checkpoint left (steps {', '.join(map(str, damaged))} were "
        f"damaged and are moved aside as <step>{DAMAGED_SUFFIX}): relaunching trains from step 0; "
        "to resume instead, put an intact copy of a step back first")
  return None


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
                            "<step>/{state,config} from training")
  return directory.absolute(), step  # Orbax refuses relative paths
