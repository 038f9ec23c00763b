"""Training and evaluation runs (reference `main.py` and `Trainer`): the epoch loop, checkpoints,
metrics.

`train_and_evaluate(run, workdir)` trains a `specs.RunSpec` as the reference does:
`num_init_epochs` warm-up epochs with the reconstruction loss only, then `num_epochs` main epochs,
evaluating on CUFED5 every `eval_every` main epochs and after the last. It resumes from the latest
intact checkpoint of WORKDIR/checkpoints by itself, moving damaged ones aside
(`checkpoint.restore_latest_intact`). The input pipeline's batches are a function of (seed, epoch,
batch index), so a run resumed at step k continues exactly as the uninterrupted run would.

`evaluate(run, workdir, checkpoint)` reads a checkpoint's generator and evaluates it as
training does.

Workdir layout:
  checkpoints/<step>/   Orbax checkpoints (see `ttsr_jax/checkpoint.py`)
  tensorboard/          TensorBoard events: train/* (losses, learning rates, D scores, averaged
                        over `log_every` steps), eval/* (PSNR/SSIM per protocol, image grids),
                        steps_per_sec; plugins/profile/ holds the jax.profiler trace of
                        `profile_steps` steps (TensorBoard's profile tab)
  evals.jsonl           one line per evaluation during training
  eval_<step>.json      written by `evaluate`
"""

import dataclasses
import json
import pathlib
import signal
import threading
import time
from collections.abc import Callable
from typing import Any, Optional, Union

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

# data_pipeline before clu: clu imports TensorFlow, which reads the settings that importing
# data_pipeline makes (data_pipeline/__init__.py).
from data_pipeline import cufed
from data_pipeline import samples
from data_pipeline import train_batches
from clu import metric_writers
from clu import periodic_actions
from ttsr_jax import checkpoint
from ttsr_jax import evaluate as evaluate_lib
from ttsr_jax import generators
from ttsr_jax import sharding
from ttsr_jax import specs
from ttsr_jax import step as step_lib
from ttsr_jax import vgg19_weights

Params = Any
PathLike = Union[str, pathlib.Path]

# fold_in salt of the random VGG19's key, apart from the state's PRNGKey(seed) stream.
_VGG_SALT = 1


class TrainError(Exception):
  """A problem with the run's set-up that the user can fix; reported in one line."""


class NonFiniteLossError(TrainError):
  """A loss (or another training metric) became NaN or infinite."""


def load_vgg_params(path: Optional[str], model: specs.ModelSpec, seed: int) -> Params:
  """VGG19 parameters (host arrays) for the LTE's initialisation and the perceptual loss.

  From `path` (`config.model.vgg19_weights`), or random from `seed` when it is None (the same on
  every run of the config, so a resumed run recreates them).
  """
  if path is None:
    logging.warning(
        "\n%s\nconfig.model.vgg19_weights is None: the LTE and the perceptual loss use a RANDOMLY "
        "INITIALISED VGG19\n(seed %d), not ImageNet weights. Fine for the demo and tests; the "
        "paper's experiments need\n`python -m ttsr_jax.tools.vgg19` (see docs/training.md).\n%s",
        "=" * 100, seed, "=" * 100)
    key = jax.random.fold_in(jax.random.PRNGKey(seed), _VGG_SALT)
    return jax.device_get(step_lib.init_vgg_params(model, key))
  if not pathlib.Path(path).is_file():
    raise TrainError(
        f"config.model.vgg19_weights = {path}: file not found. This config trains with ImageNet "
        "VGG19 weights (LTE initialisation and perceptual loss). Create the default file with "
        f"`python -m ttsr_jax.tools.vgg19` (writes {vgg19_weights.default_weights_path()}; needs a "
        "network and torch, or --from a downloaded torchvision .pth / Keras .h5), or point "
        "--config.model.vgg19_weights at a converted .npz")
  logging.info("VGG19 weights from %s", path)
  return jax.device_get(vgg19_weights.load_vgg19_params(path))


def _replicate(tree: Params, mesh: jax.sharding.Mesh) -> Params:
  """Host arrays (equal on every process) as arrays replicated over the whole mesh."""
  replicated = sharding.replicated(mesh)
  return jax.tree_util.tree_map(
      lambda x: jax.make_array_from_process_local_data(replicated, np.asarray(x)), tree)


def load_train_shard(cufed_dir: str, data_dir: Optional[str],
                     patch_size: int) -> train_batches.TrainShard:
  """This process's part of the training set of `patch_size` HR patches, preparing the dataset
  (in `data_dir`, None = CUFED_DIR/tfds) first if needed."""
  data_dir = data_dir or cufed.default_data_dir(cufed_dir)
  if not cufed.builder(data_dir, patch_size).is_prepared():
    if jax.process_index() == 0:
      logging.info("Preparing %s for %dx%d patches in %s", cufed_dir, patch_size, patch_size,
                   data_dir)
      cufed.prepare(cufed_dir, data_dir, patch_size)
    evaluate_lib.sync_processes("ttsr_dataset_prepared")
  shard = train_batches.load_train_shard(data_dir, patch_size)
  logging.info("Process %d of %d reads %d of %d training examples (indices %s)",
               shard.process_index, shard.process_count, len(shard.indices), shard.num_examples,
               np.array2string(shard.indices, threshold=32, max_line_width=200))
  return shard


class _Preemption:
  """Whether to stop for SIGTERM, checked once per step.

  With several processes, JAX's coordination service sees the signal and all processes agree on
  the step to stop at (`reached_preemption_sync_point`); a single process installs its own
  handler.
  """

  def __init__(self):
    self._flag = threading.Event()
    self._previous = None
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, lambda *_: self._flag.set())

  def __call__(self, step: int) -> bool:
    if jax.process_count() > 1:
      try:
        return multihost_utils.reached_preemption_sync_point(step)
      except RuntimeError:  # the preemption service is off
        return False
    return self._flag.is_set()

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


class _IntervalMetrics:
  """Step metrics kept on the devices until the interval ends, then averaged on the host."""

  def __init__(self, writer: metric_writers.MetricWriter):
    self._writer = writer
    self._pending: list[dict[str, jax.Array]] = []
    self._first_step = 0

  def add(self, step: int, metrics: dict[str, jax.Array]) -> None:
    if not self._pending:
      self._first_step = step
    self._pending.append(metrics)

  def flush(self, step: int) -> None:
    """Writes the interval's means at `step`.

    Raises:
      NonFiniteLossError: a metric of the interval is NaN or infinite.
    """
    if not self._pending:
      return
    pending, self._pending = jax.device_get(self._pending), []
    for offset, metrics in enumerate(pending):
      bad = {k: float(v) for k, v in metrics.items() if not np.isfinite(v)}
      if bad:
        raise NonFiniteLossError(
            f"step {self._first_step + offset}: non-finite training metrics {bad}; stopping. "
            "The checkpoints in the workdir are from before this step (a lower learning rate or "
            "loss weight may help)")
    keys = {k for metrics in pending for k in metrics}
    self._writer.write_scalars(step, {
        f"train/{k}": float(np.mean([m[k] for m in pending if k in m])) for k in sorted(keys)})


class StepProfiler:
  """Writes a jax.profiler trace of `num_steps` training steps into `log_dir` (TensorBoard's
  profile tab reads LOG_DIR/plugins/profile). 0 steps: off.

  The trace starts after the run's first step, so that it shows steady steps rather than
  one-time work; it ends after waiting for the last traced step's outputs, so that their device
  work is inside it.
  """

  def __init__(self, log_dir: PathLike, num_steps: int):
    self._log_dir = str(log_dir)
    self._num_steps = num_steps
    self._steps_seen = 0
    self._active = False

  def before_step(self, step: int) -> None:
    """`step`: the iterations done before this one, for the log line."""
    if self._num_steps > 0 and self._steps_seen == 1:
      jax.profiler.start_trace(self._log_dir)
      self._active = True
      logging.info("Profiling %d steps from step %d", self._num_steps, step + 1)
    self._steps_seen += 1

  def after_step(self, outputs: Any) -> None:
    """`outputs`: the step's outputs, waited for before the trace ends."""
    if self._active and self._steps_seen == 1 + self._num_steps:
      jax.block_until_ready(outputs)
      self.close()
      logging.info("Profile written to %s/plugins/profile", self._log_dir)

  def close(self) -> None:
    """Ends the trace early (the run stopped inside it); idempotent."""
    if self._active:
      jax.profiler.stop_trace()
      self._active = False


def _write_json_line(path: pathlib.Path, record: dict[str, Any]) -> None:
  with open(path, "a") as f:
    f.write(json.dumps(record) + "\n")


def train_and_evaluate(run: specs.RunSpec, workdir: PathLike) -> dict[str, float]:
  """Trains (resuming from `workdir` if it holds checkpoints) and evaluates.

  Returns:
    The last evaluation's metrics ({} if the run stopped before any).

  Raises:
    TrainError: a set-up problem (missing weights) or a non-finite loss (NonFiniteLossError); the
      workdir keeps the last good checkpoint.
    checkpoint.CheckpointError: a checkpoint of another model, no intact checkpoint left (the
      damaged ones moved aside), or a save that failed (the earlier checkpoints kept).
  """
  workdir = pathlib.Path(workdir)
  mesh = sharding.make_mesh()
  spec = dataclasses.replace(run.train, microbatches=sharding.resolve_microbatches(
      run.train.microbatches, run.batch_size, mesh))
  try:
    sharding.check_batch_size(run.batch_size, mesh.size, spec.microbatches)
  except ValueError as e:
    raise TrainError(str(e)) from None
  evaluator = evaluate_lib.Evaluator(spec.model, run.evaluation)
  vgg_params = _replicate(load_vgg_params(run.vgg19_weights, spec.model, spec.seed), mesh)
  if run.eval_every > 0:
    evaluator.check_data()  # a missing test set stops the run now, not after an epoch
  shard = load_train_shard(run.cufed_dir, run.data_dir, 4 * spec.train_crop_size)
  steps_per_epoch = shard.steps_per_epoch(run.batch_size)
  if steps_per_epoch == 0:
    raise TrainError(f"{shard.num_examples} training examples give no batch of "
                     f"{run.batch_size}; lower config.batch_size")
  total_epochs = spec.num_init_epochs + run.num_epochs
  total_steps = total_epochs * steps_per_epoch
  logging.info("%d devices, global batch %d in %d microbatches, %d steps per epoch, %d + %d "
               "epochs (%d steps)", mesh.size, run.batch_size, spec.microbatches,
               steps_per_epoch, spec.num_init_epochs, run.num_epochs, total_steps)

  evaluate_lib.sync_processes("ttsr_setup")  # Orbax's first steps use device collectives
  mngr = checkpoint.manager(workdir / checkpoint.CHECKPOINT_DIR, run.keep_checkpoints)
  writer = metric_writers.create_default_writer(workdir / "tensorboard",
                                                just_logging=jax.process_index() > 0)
  preemption = _Preemption()
  profiler = StepProfiler(workdir / "tensorboard", run.profile_steps)
  try:
    restored = checkpoint.restore_latest_intact(mngr, spec, mesh)
    if restored is None:
      init = jax.jit(lambda vgg: step_lib.create_train_state(spec, vgg, steps_per_epoch),
                     out_shardings=sharding.replicated(mesh))
      state, last_eval = init(vgg_params), {}
      writer.write_hparams(checkpoint.flat_config(run.config()))
    else:
      state, last_eval = restored[0], restored[1] or {}
      logging.info("Resuming from %s",
                   workdir / checkpoint.CHECKPOINT_DIR / str(mngr.latest_step()))
    step = int(jax.device_get(state.step))
    train_steps = _compile_train_steps(spec, run.batch_size, steps_per_epoch, mesh, state,
                                       vgg_params, first_step=step, total_steps=total_steps)
    evaluate_lib.sync_processes(f"ttsr_compiled_{step}")
    interval = _IntervalMetrics(writer)
    report = periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer)
    logging.info("Training from step %d of %d", step, total_steps)

    def save(metrics: Optional[dict[str, float]] = None) -> None:
      interval.flush(step)  # never stores a state that followed a non-finite loss
      checkpoint.save(mngr, step, state, run.config(), metrics)

    for epoch in range(step // steps_per_epoch, total_epochs):
      warmup = epoch < spec.num_init_epochs
      batches = train_batches.train_iterator(
          shard, seed=spec.seed, epoch=epoch, global_batch_size=run.batch_size,
          batch_sharding=sharding.batch_sharding(mesh),
          start_batch=step - epoch * steps_per_epoch)
      for batch in batches:
        # Checked before the step, so that an epoch's last step is followed by its evaluation
        # and checkpoint even when the signal came during it.
        if preemption(step):
          if mngr.latest_step() != step:
            save()
          logging.warning("SIGTERM: stopped at step %d; the checkpoint of that step is in %s",
                          step, workdir / checkpoint.CHECKPOINT_DIR)
          return last_eval
        profiler.before_step(step)
        state, metrics = train_steps[warmup](state, batch, vgg_params)
        step += 1
        profiler.after_step(metrics)
        interval.add(step, metrics)
        report(step)
        if step % run.log_every == 0:
          interval.flush(step)
      interval.flush(step)
      main_epoch = epoch + 1 - spec.num_init_epochs
      last = epoch + 1 == total_epochs
      evaluated = main_epoch > 0 and run.eval_every > 0 and (
          main_epoch % run.eval_every == 0 or last)
      if evaluated:
        last_eval = _evaluate_and_write(evaluator, state.g_params, step, writer)
        if jax.process_index() == 0:
          _write_json_line(workdir / "evals.jsonl", {"step": step, "epoch": epoch + 1,
                                                     **last_eval})
      if evaluated or (epoch + 1) % run.checkpoint_every == 0 or last:
        save({checkpoint.BEST_METRIC: last_eval[evaluator.primary_metric], **last_eval}
             if evaluated else None)
    logging.info("Finished at step %d; checkpoints in %s", step,
                 workdir / checkpoint.CHECKPOINT_DIR)
    return last_eval
  finally:
    profiler.close()
    preemption.close()
    mngr.close()
    writer.close()


def _compile_train_steps(spec: specs.TrainSpec, batch_size: int, steps_per_epoch: int,
                         mesh: jax.sharding.Mesh, state: step_lib.TrainState, vgg_params: Params,
                         first_step: int, total_steps: int) -> dict[bool, Callable]:
  """The jitted warm-up (key True) and main (False) steps that the run still needs, compiled now.

  Compiling ahead lets the processes of a multi-host run meet after their (unequal) compile
  times, before the first step's collectives.
  """
  patch = 4 * spec.train_crop_size
  shapes = {key: (batch_size, patch, patch, 3) for key in samples.IMAGE_KEYS}
  shapes["lr"] = (batch_size, spec.train_crop_size, spec.train_crop_size, 3)
  data = sharding.batch_sharding(mesh)
  batch = {key: jax.ShapeDtypeStruct(shape, np.float32, sharding=data)
           for key, shape in shapes.items()}
  warmup_steps = spec.num_init_epochs * steps_per_epoch
  needed = [True] if first_step < warmup_steps else []
  if max(first_step, warmup_steps) < total_steps:
    needed.append(False)
  return {warmup: sharding.jit_train_step(
      step_lib.make_train_step(spec, steps_per_epoch, warmup=warmup), mesh
  ).lower(state, batch, vgg_params).compile() for warmup in needed}


def _evaluate_and_write(evaluator: evaluate_lib.Evaluator, g_params: Params, step: int,
                        writer: metric_writers.MetricWriter) -> dict[str, float]:
  start = time.time()
  results, grids = evaluator(g_params)
  writer.write_scalars(step, {f"eval/{k}": v for k, v in results.items()})
  if grids:
    writer.write_images(step, {f"eval/{k}": v for k, v in grids.items()})
  logging.info("Evaluation at step %d (%.1f s): %s", step, time.time() - start, _summary(results))
  return results


def _summary(results: dict[str, float]) -> str:
  names = dict.fromkeys(k.split("/")[0] for k in results)
  return "; ".join(
      f"{n} PSNR {results[f'{n}/psnr']:.3f} SSIM {results[f'{n}/ssim']:.4f} (bicubic "
      f"{results[f'{n}/bicubic_psnr']:.3f} / {results[f'{n}/bicubic_ssim']:.4f})" for n in names)


def evaluate(run: specs.RunSpec, workdir: PathLike, which: str = "latest") -> dict[str, float]:
  """Evaluates a checkpoint as training does and writes WORKDIR/eval_<step>.json.

  Args:
    run: the run (its model must match the checkpoint's).
    workdir: the run's directory.
    which: 'latest' or 'best' checkpoint of the workdir, or a checkpoint path (see
      `checkpoint.locate`).

  Returns:
    The metrics, as `train_and_evaluate` reports them.
  """
  workdir = pathlib.Path(workdir)
  evaluator = evaluate_lib.Evaluator(run.train.model, run.evaluation)
  directory, step = checkpoint.locate(workdir, which)
  target = generators.abstract_params(run.train.model)
  g_params = checkpoint.read_generator_params(directory, step, target, run.train)
  results, _ = evaluator(jax.device_put(g_params))
  logging.info("Checkpoint %s: %s", directory / str(step), _summary(results))
  if jax.process_index() == 0:
    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir / f"eval_{step}.json", "w") as f:
      json.dump(evaluate_lib.evaluate_record(evaluator.spec, results, evaluator.images,
                                             checkpoint=str(directory / str(step)), step=step),
                f, indent=2)
  return results
