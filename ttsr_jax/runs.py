"""Training workdirs as reports read them: TensorBoard events, the stored config, devices,
evaluations and the checkpoint to render samples from (layout in ttsr_jax/train.py)."""

import dataclasses
import json
import math
import os
import pathlib
import re
from typing import Any, Optional, Union

from google.protobuf import json_format
import jax
import orbax.checkpoint as ocp
from tensorboard.backend.event_processing import plugin_event_accumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.plugins.scalar import metadata as scalar_metadata
from tensorboard.util import tensor_util

from ttsr_jax import checkpoint

PathLike = Union[str, os.PathLike]
Series = list[tuple[int, float]]  # (step, value) by step

TENSORBOARD_DIR = "tensorboard"  # under the workdir, as train.py writes it
MISSING = "—"  # what the report shows for a value a run lacks


@dataclasses.dataclass
class Events:
  """What a workdir's TensorBoard event files hold."""
  scalars: dict[str, Series]  # by tag; a step logged again by a later launch keeps its last value
  hparams: dict[str, Any]  # flattened config ('loss.rec_w': 1.0, ...) of the first launch
  launch_seconds: list[float]  # first to last event of each event file (one per launch)


@dataclasses.dataclass
class Run:
  """One workdir's contents as the report uses them; empty where the workdir lacks them."""
  name: str
  workdir: pathlib.Path
  scalars: dict[str, Series] = dataclasses.field(default_factory=dict)
  launch_seconds: list[float] = dataclasses.field(default_factory=list)
  config: dict[str, Any] = dataclasses.field(default_factory=dict)  # nested, as stored
  flat_config: dict[str, Any] = dataclasses.field(default_factory=dict)  # dotted keys
  config_source: str = MISSING
  devices: Optional[int] = None
  steps_per_epoch: Optional[int] = None
  eval_files: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  sample_checkpoint: Optional[tuple[pathlib.Path, int]] = None  # (checkpoints dir, step)
  problems: list[str] = dataclasses.field(default_factory=list)

  def has_data(self) -> bool:
    return bool(self.scalars or self.flat_config or self.eval_files)

  def protocols(self) -> list[str]:
    """Evaluation protocols in the events ('level1', 'multi_reference', ...)."""
    return sorted({m.group(1) for tag in self.scalars
                   if (m := re.fullmatch(r"eval/(.+)/psnr", tag))})

  def last_step(self) -> Optional[int]:
    return max((s[-1][0] for s in self.scalars.values()), default=None)

  def when(self, step: int) -> str:
    """'epoch E (step S)', or 'step S' where the epoch length is unknown."""
    if self.steps_per_epoch:
      return f"epoch {step // self.steps_per_epoch} (step {step})"
    return f"step {step}"


def read_events(logdir: PathLike) -> Optional[Events]:
  """Scalars, hparams and launch durations from the event files in `logdir` (None if none).

  clu writes scalars as tensor summaries of the 'scalars' plugin; the plugin accumulator also
  turns TF1-style simple values into such tensors, so both kinds are read.
  """
  accumulators = []
  for path in pathlib.Path(logdir).glob("events.out.tfevents.*"):
    # Keep every scalar; of the image grids only the latest, which the report does not use.
    acc = plugin_event_accumulator.EventAccumulator(
        str(path), size_guidance={plugin_event_accumulator.TENSORS: 0},
        tensor_size_guidance={"images": 1})
    acc.Reload()
    try:
      acc.FirstEventTimestamp()
    except ValueError:  # an empty file, e.g. from a launch that died at once
      continue
    accumulators.append(acc)
  if not accumulators:
    return None
  accumulators.sort(key=lambda acc: acc.FirstEventTimestamp())
  values: dict[str, dict[int, float]] = {}
  hparams, launch_seconds = {}, []
  for acc in accumulators:
    last = acc.FirstEventTimestamp()
    for tag in acc.Tags()[plugin_event_accumulator.TENSORS]:
      events = acc.Tensors(tag)
      last = max([last] + [e.wall_time for e in events])
      if acc.SummaryMetadata(tag).plugin_data.plugin_name == scalar_metadata.PLUGIN_NAME:
        values.setdefault(tag, {}).update(
            (e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in events)
    launch_seconds.append(last - acc.FirstEventTimestamp())
    try:
      content = acc.PluginTagToContent(hparams_metadata.PLUGIN_NAME)
    except KeyError:  # written at a fresh start only, not when a launch resumes
      content = {}
    if not hparams and hparams_metadata.SESSION_START_INFO_TAG in content:
      info = hparams_metadata.parse_session_start_info_plugin_data(
          content[hparams_metadata.SESSION_START_INFO_TAG])
      hparams = {k: json_format.MessageToDict(v) for k, v in info.hparams.items()}
  scalars = {tag: sorted(by_step.items()) for tag, by_step in values.items()}
  return Events(scalars, hparams, launch_seconds)


def _saved_devices(step_dir: pathlib.Path) -> Optional[int]:
  """Devices of the mesh the step's state was replicated over when it was saved."""
  # Orbax reads arrays (and their metadata) from absolute paths only.
  tree = ocp.StandardCheckpointHandler().metadata((step_dir / "state").absolute())
  sharding = getattr(jax.tree_util.tree_leaves(tree)[0], "sharding", None)
  return None if sharding is None else math.prod(sharding.shape)


def load_run(workdir: PathLike, name: str) -> Run:
  """Everything the report shows of one workdir, with a message for each part it lacks."""
  run = Run(name, pathlib.Path(workdir))
  if not run.workdir.is_dir():
    run.problems.append(f"{run.workdir}: no such directory")
    return run
  logdir = run.workdir / TENSORBOARD_DIR
  events = read_events(logdir) if logdir.is_dir() else None
  if events is None:
    run.problems.append(f"{logdir}: no TensorBoard event files; no curves or results for this "
                        "run")
  else:
    run.scalars, run.launch_seconds = events.scalars, events.launch_seconds
    if not run.protocols():
      run.problems.append(f"{logdir}: no evaluation in the events (eval_every 0, or the run "
                          "stopped before its first evaluation); no PSNR/SSIM for this run")

  try:
    directory, latest = checkpoint.locate(run.workdir, "latest")
  except checkpoint.DamagedCheckpointError:
    raise  # stops the report, unlike a missing checkpoint
  except checkpoint.CheckpointError as e:
    run.problems.append(f"{e}; no stored config, device count or samples for this run")
  else:
    run.config = checkpoint.stored_config(directory, latest)
    run.flat_config = checkpoint.flat_config(run.config)
    run.config_source = f"checkpoint step {latest}"
    run.devices = _saved_devices(directory / str(latest))
    try:
      run.sample_checkpoint = checkpoint.locate(run.workdir, "best")
    except checkpoint.CheckpointError:
      run.sample_checkpoint = directory, latest
      run.problems.append(f"{directory}: no evaluated checkpoint; samples from the latest "
                          f"(step {latest})")
  if not run.flat_config and events is not None and events.hparams:
    run.flat_config, run.config_source = events.hparams, "TensorBoard hparams"

  evals_path = run.workdir / "evals.jsonl"
  if evals_path.is_file() and evals_path.stat().st_size:
    # Evaluations come at the end of an epoch, so any one of them gives the epoch's length.
    first = json.loads(evals_path.read_text().splitlines()[0])
    run.steps_per_epoch = first["step"] // first["epoch"]
  run.eval_files = sorted((json.loads(p.read_text()) for p in run.workdir.glob("eval_*.json")),
                          key=lambda e: e.get("step", 0))
  return run
