"""The training loop on a tiny generated dataset: files written, resume after SIGKILL and SIGTERM
bit-identical to an uninterrupted run, eval mode, non-finite losses, foreign checkpoints,
checkpoint retention.

One uninterrupted run (in this process, the `uninterrupted` fixture of conftest.py) is shared by
the tests; the interrupted runs go through launch.py in subprocesses. All runs use the same tiny
config, so XLA's persistent cache compiles each program once.
"""

import json
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow as tf

from tiny_runs import ROOT, STEPS_PER_EPOCH, TOTAL_STEPS, assert_identical, restore_state
from tiny_runs import subprocess_env
from ttsr_jax import checkpoint
from ttsr_jax import specs
from ttsr_jax import train


def _summary_tags(logdir: pathlib.Path) -> dict[str, set[str]]:
  """Summary tags in the event files under `logdir`, by plugin ('scalars', 'images', ...)."""
  tags: dict[str, set[str]] = {}
  for path in logdir.glob("events.out.tfevents.*"):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      for value in event.summary.value:
        tags.setdefault(value.metadata.plugin_data.plugin_name, set()).add(value.tag)
  return tags


@pytest.mark.slow  # trains the tiny run (conftest.uninterrupted)
def test_run_writes_checkpoints_events_and_images(uninterrupted):
  workdir, config, metrics = uninterrupted
  steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  # Checkpoints after every epoch (8, 16, 24); the 2 latest are kept, and the best is one of them.
  assert steps == [2 * STEPS_PER_EPOCH, TOTAL_STEPS]
  for step in steps:
    assert {"state", "config", "metrics"} <= {p.name for p in (workdir / "checkpoints" /
                                                               str(step)).iterdir()}
  tags = _summary_tags(workdir / "tensorboard")
  for tag in ("train/loss/rec", "train/loss/per", "train/loss/tpl", "train/loss/adv",
              "train/loss/total", "train/lr/main", "train/lr/lte", "train/d/real",
              "train/d/fake", "eval/level1/psnr", "eval/level1/ssim",
              "eval/level1/bicubic_psnr", "steps_per_sec"):
    assert tag in tags["scalars"], tag
  assert any(tag.startswith("eval/level1/") for tag in tags["images"])
  evals = [json.loads(line) for line in (workdir / "evals.jsonl").read_text().splitlines()]
  # After each main epoch, none in warm-up.
  assert [e["step"] for e in evals] == [2 * STEPS_PER_EPOCH, TOTAL_STEPS]
  assert metrics == {k: v for k, v in evals[-1].items() if k not in ("step", "epoch")}
  assert np.isfinite(metrics["level1/psnr"]) and 0 < metrics["level1/ssim"] <= 1


@pytest.mark.slow  # trains the tiny run (conftest.uninterrupted)
def test_eval_mode_reproduces_the_last_evaluation(uninterrupted, tmp_path):
  # A copy: the shared run's folder stays as training left it for the other tests (report).
  workdir, config, metrics = uninterrupted
  workdir = shutil.copytree(workdir, tmp_path / "run")
  run = specs.run_spec(config)
  assert train.evaluate(run, workdir) == metrics
  written = json.loads((workdir / f"eval_{TOTAL_STEPS}.json").read_text())
  assert written["level1/psnr"] == metrics["level1/psnr"]
  # The best checkpoint by PSNR, and a step directory given as a path.
  evals = [json.loads(line) for line in (workdir / "evals.jsonl").read_text().splitlines()]
  best = max(evals, key=lambda e: e["level1/psnr"])
  assert train.evaluate(run, workdir, "best")["level1/psnr"] == best["level1/psnr"]
  step_dir = workdir / "checkpoints" / str(evals[0]["step"])
  assert train.evaluate(run, workdir, str(step_dir))["level1/psnr"] == evals[0]["level1/psnr"]


def _launch(config_file: pathlib.Path, workdir: pathlib.Path, log: pathlib.Path,
            *overrides: str) -> subprocess.Popen:
  command = [sys.executable, "launch.py", f"--config={config_file}", f"--workdir={workdir}",
             *overrides]
  with open(log, "ab") as f:
    return subprocess.Popen(command, cwd=ROOT, env=subprocess_env(), stdout=f,
                            stderr=subprocess.STDOUT)


def _wait_until(condition, process: subprocess.Popen, log: pathlib.Path,
                timeout: float = 300) -> None:
  deadline = time.time() + timeout
  while not condition():
    if process.poll() is not None:
      raise AssertionError(f"exited with {process.returncode} too early:\n"
                           f"{log.read_text()[-4000:]}")
    if time.time() > deadline:
      process.kill()
      raise AssertionError(f"timed out:\n{log.read_text()[-4000:]}")
    time.sleep(0.05)


@pytest.mark.slow  # three launch.py subprocesses, killed and resumed
def test_sigkill_and_sigterm_then_resume_match_the_uninterrupted_run(uninterrupted,
                                                                     tiny_config_file,
                                                                     tmp_path):
  ref_workdir, config, _ = uninterrupted
  workdir, log = tmp_path / "run", tmp_path / "log.txt"
  checkpoints = workdir / "checkpoints"

  # 1. SIGKILL as soon as the first checkpoint (end of the warm-up epoch) is complete.
  process = _launch(tiny_config_file, workdir, log)
  _wait_until(lambda: (checkpoints / str(STEPS_PER_EPOCH) / "commit_success.txt").exists(),
              process, log)
  process.send_signal(signal.SIGKILL)
  assert process.wait(60) == -signal.SIGKILL
  killed_at = max(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
  assert killed_at < TOTAL_STEPS, "the run ended before it was killed"

  # 2. Relaunched with the same command, it resumes; SIGTERM mid-epoch saves and exits cleanly.
  process = _launch(tiny_config_file, workdir, log)
  _wait_until(lambda: "Resuming from" in log.read_text()
              and f"[{killed_at + 2}] train/" in log.read_text(), process, log)
  process.send_signal(signal.SIGTERM)
  assert process.wait(120) == 0, log.read_text()[-4000:]
  assert "SIGTERM: stopped at step" in log.read_text()
  stopped_at = max(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
  assert killed_at < stopped_at < TOTAL_STEPS
  assert stopped_at % STEPS_PER_EPOCH, "SIGTERM came at an epoch's end, not mid-epoch"
  assert int(restore_state(workdir, config, stopped_at).step) == stopped_at  # restorable

  # 3. Relaunched again, it finishes with exactly the uninterrupted run's state and evaluation.
  process = _launch(tiny_config_file, workdir, log)
  assert process.wait(300) == 0, log.read_text()[-4000:]
  assert_identical(restore_state(workdir, config), restore_state(ref_workdir, config))
  last = lambda d: json.loads((d / "evals.jsonl").read_text().splitlines()[-1])
  assert last(workdir) == last(ref_workdir)


@pytest.mark.slow  # trains the tiny run (conftest.uninterrupted)
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(uninterrupted, tmp_path,
                                                                   monkeypatch):
  ref_workdir, config, _ = uninterrupted
  workdir = tmp_path / "run"
  shutil.copytree(ref_workdir, workdir)
  # A corrupt input: every batch of the resumed run is NaN, so the first step's losses are. The
  # compiled steps stay those of the uninterrupted run (a changed hyperparameter would recompile).
  real_iterator = train.train_batches.train_iterator

  def nan_batches(*args, **kwargs):
    for batch in real_iterator(*args, **kwargs):
      yield {key: value * np.nan for key, value in batch.items()}

  monkeypatch.setattr(train.train_batches, "train_iterator", nan_batches)
  config = config.copy_and_resolve_references()
  config.num_epochs = 3
  with pytest.raises(train.NonFiniteLossError, match=r"step \d+: non-finite training metrics"):
    train.train_and_evaluate(specs.run_spec(config), workdir)
  with checkpoint.manager(workdir / "checkpoints", read_only=True) as mngr:
    assert mngr.latest_step() == TOTAL_STEPS
  assert_identical(restore_state(workdir, config), restore_state(ref_workdir, config))


@pytest.mark.slow  # trains the tiny run (conftest.uninterrupted)
def test_checkpoint_of_another_model_is_refused(uninterrupted, tmp_path):
  workdir, config, _ = uninterrupted
  workdir = shutil.copytree(workdir, tmp_path / "run")  # the refused run writes events
  config = config.copy_and_resolve_references()
  config.model.n_feats = 16
  config.model.num_res_blocks = (2, 1, 1, 1)
  with pytest.raises(checkpoint.CheckpointError) as error:
    train.train_and_evaluate(specs.run_spec(config), workdir)
  message = str(error.value)
  assert "model.n_feats: checkpoint 8, this config 16" in message
  assert "model.num_res_blocks: checkpoint [1, 1, 1, 1], this config [2, 1, 1, 1]" in message
  assert "res_scale" not in message


def test_retention_keeps_the_latest_and_the_best(tmp_path):
  with checkpoint.manager(tmp_path, keep=2) as mngr:
    for step, psnr in ((1, 30.0), (2, None), (3, 20.0), (4, 25.0), (5, None)):
      mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave({"x": np.zeros(1)}),
                                              config=ocp.args.JsonSave({})),
                metrics=None if psnr is None else {checkpoint.BEST_METRIC: psnr})
    assert mngr.all_steps() == [1, 4, 5]
    assert mngr.best_step() == 1
