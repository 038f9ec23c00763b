"""Damaged checkpoints: the manifest catches a truncated file and a flipped byte, training resumes
from the latest intact step (moving the damaged one aside) and ends bit-identical to an
uninterrupted run, every command that reads a checkpoint stops with one line naming the step and
the intact one, and a save that fails stops training with one line and keeps the earlier steps.

The fast tests write random TrainStates of the tiny config (no training); the slow ones damage a
copy of the session's tiny run (conftest.uninterrupted).
"""

import asyncio
import contextlib
import gc
import json
import logging
import pathlib
import resource
import shutil
import subprocess
import sys

import jax
import numpy as np
from PIL import Image
import pytest

from tiny_configs import all_losses
from tiny_runs import ROOT, STEPS_PER_EPOCH, TOTAL_STEPS, assert_identical, restore_state
from tiny_runs import subprocess_env
from ttsr_jax import checkpoint
from ttsr_jax import eval_checkpoint
from ttsr_jax import report
from ttsr_jax import sharding
from ttsr_jax import specs
from ttsr_jax import train

# Above the tiny run's TensorBoard events and captured logs, below its state's largest data files
# (several MB each): a save under this limit fails the way a full disk makes it fail.
FILE_SIZE_LIMIT = 4 << 20


@pytest.fixture(autouse=True)
def absl_warnings(caplog):
  """These tests read training's warnings; the commands other tests run in this process
  (`report.main`, `eval_checkpoint.main`) leave absl's verbosity at ERROR."""
  caplog.set_level(logging.WARNING, logger="absl")


@pytest.fixture(scope="module")
def run():
  return specs.run_spec(all_losses(train_crop_size=8, batch_size=2))


@pytest.fixture(scope="module")
def mesh():
  return sharding.make_mesh(jax.devices()[:1])


def _random_state(run, mesh, seed: int):
  """A TrainState of `run` with random entries (host arrays)."""
  rng = np.random.default_rng(seed)

  def draw(leaf):
    if np.issubdtype(leaf.dtype, np.floating):
      return rng.random(leaf.shape, dtype=leaf.dtype)
    return rng.integers(0, 1000, leaf.shape).astype(leaf.dtype)

  return jax.tree_util.tree_map(draw, checkpoint.abstract_train_state(run.train, mesh))


@pytest.fixture(scope="module")
def written(tmp_path_factory, run, mesh) -> tuple[pathlib.Path, dict]:
  """(checkpoints directory, {step: state}) of random states at steps 1 and 2 (evaluated); tests
  copy it."""
  directory = tmp_path_factory.mktemp("written") / "checkpoints"
  states = {step: _random_state(run, mesh, step) for step in (1, 2)}
  with checkpoint.manager(directory, keep=2) as mngr:
    for step, state in states.items():
      checkpoint.save(mngr, step, state, run.config(),
                      metrics={checkpoint.BEST_METRIC: 20.0 + step})
  return directory, states


def _copy(written, tmp_path: pathlib.Path) -> tuple[pathlib.Path, dict]:
  directory, states = written
  shutil.copytree(directory, tmp_path / "checkpoints")
  return tmp_path / "checkpoints", states


def _largest_data_file(step_dir: pathlib.Path) -> pathlib.Path:
  return max((p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"),
             key=lambda p: p.stat().st_size)


def _truncate(path: pathlib.Path) -> None:
  """Halves a file, as an interrupted copy or a full disk leaves it."""
  with open(path, "r+b") as f:
    f.truncate(path.stat().st_size // 2)


def _flip_byte(path: pathlib.Path) -> None:
  """Inverts one byte in the middle of a file, keeping its length (a failing drive)."""
  with open(path, "r+b") as f:
    f.seek(path.stat().st_size // 2)
    byte = f.read(1)
    f.seek(-1, 1)
    f.write(bytes([byte[0] ^ 0xFF]))


@contextlib.contextmanager
def _file_size_limit(limit: int):
  """Writes past `limit` bytes fail with EFBIG (Python ignores SIGXFSZ)."""
  soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
  resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
  try:
    yield
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def _damage_warnings(caplog) -> list[str]:
  return [r.getMessage() for r in caplog.records
          if r.levelno == logging.WARNING and "damaged checkpoint" in r.getMessage()]


# --- the manifest --------------------------------------------------------------------------------

def test_manifest_catches_truncation_a_flipped_byte_and_a_missing_file(tmp_path, written):
  step_dir = _copy(written, tmp_path)[0] / "1"
  manifest = json.loads((step_dir / checkpoint.MANIFEST).read_text())["files"]
  written = {p.relative_to(step_dir).as_posix() for p in step_dir.rglob("*") if p.is_file()}
  assert set(manifest) == written - {checkpoint.MANIFEST}
  checkpoint.verify(step_dir)

  damages = {"truncated": (_truncate, "bytes, its manifest says"),
             "flipped": (_flip_byte, "another SHA-256 (changed content)"),
             "missing": (pathlib.Path.unlink, ": missing")}
  for name, (damage, reason) in damages.items():
    copy = tmp_path / name / "1"
    shutil.copytree(step_dir, copy)
    data_file = _largest_data_file(copy)
    damage(data_file)
    with pytest.raises(checkpoint.DamagedCheckpointError) as error:
      checkpoint.verify(copy)
    assert str(error.value).startswith(f"{copy}: damaged checkpoint of step 1: "
                                       f"{data_file.relative_to(copy).as_posix()}: "), name
    assert reason in str(error.value), name
    checkpoint.verify(copy, ("config",))  # the config's files are intact

  (step_dir / checkpoint.MANIFEST).write_text('{"files": {')  # cut short
  with pytest.raises(checkpoint.DamagedCheckpointError, match="manifest.json: unreadable"):
    checkpoint.verify(step_dir)
  (step_dir / checkpoint.MANIFEST).unlink()
  checkpoint.verify(step_dir)  # written before manifests existed: nothing to check


# --- training's fallback -------------------------------------------------------------------------

@pytest.mark.parametrize("damage", [_truncate, _flip_byte])
def test_training_restores_the_latest_intact_step_and_moves_the_damaged_aside(
    damage, written, tmp_path, run, mesh, caplog):
  directory, states = _copy(written, tmp_path)
  damage(_largest_data_file(directory / "2"))
  with checkpoint.manager(directory, keep=2) as mngr:
    state, _ = checkpoint.restore_latest_intact(mngr, run.train, mesh)
    assert mngr.all_steps() == [1]
  assert_identical(jax.device_get(state), states[1])
  [warning] = _damage_warnings(caplog)
  assert warning.startswith(f"{directory / '2'}: damaged checkpoint of step 2: state/")
  assert f"moved it aside to {directory / '2.damaged'}" in warning
  assert sorted(p.name for p in directory.iterdir() if p.name[0].isdigit()) == ["1", "2.damaged"]


def test_a_step_damaged_again_is_moved_aside_under_another_name(tmp_path):
  for _ in range(3):
    (tmp_path / "7" / "state").mkdir(parents=True)
    checkpoint.move_aside(tmp_path / "7")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["7.damaged", "7.damaged-2", "7.damaged-3"]


def test_a_checkpoint_without_manifest_that_does_not_restore_is_damaged(written, tmp_path, run,
                                                                        mesh, caplog):
  directory, states = _copy(written, tmp_path)
  (directory / "2" / checkpoint.MANIFEST).unlink()  # as written before manifests existed
  _truncate(_largest_data_file(directory / "2"))
  with checkpoint.manager(directory, keep=2) as mngr:
    state, _ = checkpoint.restore_latest_intact(mngr, run.train, mesh)
  assert_identical(jax.device_get(state), states[1])
  [warning] = _damage_warnings(caplog)
  assert "damaged checkpoint of step 2: state: cannot be restored (OUT_OF_RANGE" in warning


def test_unreadable_metrics_are_damage_before_any_restore(written, tmp_path, caplog):
  # Orbax reads every step's metrics when a manager opens, and fails on one that is not JSON.
  directory, _ = _copy(written, tmp_path)
  (directory / "2" / "metrics" / "metrics").write_text('{"psnr": 2')  # cut short
  with pytest.raises(checkpoint.DamagedCheckpointError) as error:
    checkpoint.locate(tmp_path, "best")  # as the commands open it: read-only
  assert str(error.value).startswith(
      f"{directory / '2'}: damaged checkpoint of step 2: metrics/metrics: unreadable (")
  assert str(error.value).endswith(f"the newest intact checkpoint is {directory / '1'} (step 1)")
  with checkpoint.manager(directory, keep=2) as mngr:  # as training opens it
    assert mngr.all_steps() == [1]
  [warning] = _damage_warnings(caplog)
  assert f"moved it aside to {directory / '2.damaged'}" in warning


def test_no_intact_checkpoint_left_stops_with_one_line(written, tmp_path, run, mesh):
  directory, _ = _copy(written, tmp_path)
  for step in (1, 2):
    _flip_byte(_largest_data_file(directory / str(step)))
  with checkpoint.manager(directory, keep=2) as mngr:
    with pytest.raises(checkpoint.CheckpointError) as error:
      checkpoint.restore_latest_intact(mngr, run.train, mesh)
  message = str(error.value)
  assert message.count("\n") == 0
  assert "no intact checkpoint left (steps 2, 1 were damaged" in message
  assert "relaunching trains from step 0" in message
  assert {p.name for p in directory.iterdir()} >= {"1.damaged", "2.damaged"}


def test_intact_files_that_do_not_restore_are_not_damage(tmp_path, run, mesh, caplog):
  # Files that match their manifest are the ones written: a restore that fails on them means
  # other code (here: another state structure), so the checkpoint is reported and kept.
  directory = tmp_path / "checkpoints"
  with checkpoint.manager(directory) as mngr:
    checkpoint.save(mngr, 1, {"other": np.zeros(3, np.float32)}, run.config())
  with checkpoint.manager(directory) as mngr:
    with pytest.raises(checkpoint.CheckpointError) as error:
      checkpoint.restore_latest_intact(mngr, run.train, mesh)
  assert not isinstance(error.value, checkpoint.DamagedCheckpointError)
  assert "cannot restore state, although its files match their manifest" in str(error.value)
  assert (directory / "1").is_dir() and not _damage_warnings(caplog)


# --- the save side -------------------------------------------------------------------------------

def test_failing_save_is_one_line_and_keeps_the_earlier_checkpoints(written, tmp_path, run,
                                                                    mesh):
  directory, states = _copy(written, tmp_path)
  with checkpoint.manager(directory, keep=1) as mngr:
    with _file_size_limit(FILE_SIZE_LIMIT), pytest.raises(checkpoint.CheckpointError) as error:
      checkpoint.save(mngr, 3, states[1], run.config())
    assert mngr.all_steps() == [1, 2]  # a commit would have removed step 1 (keep=1)
  message = str(error.value)
  assert message.count("\n") == 0
  assert message.startswith(f"{directory / '3'}: cannot save the checkpoint of step 3 (")
  assert "File too large" in message and "(steps: 1, 2) are as they were" in message
  for step in (1, 2):
    checkpoint.verify(directory / str(step))
  with checkpoint.manager(directory, read_only=True) as mngr:
    assert_identical(jax.device_get(checkpoint.restore(mngr, 2, run.train, mesh)[0]), states[2])
  # With room again, the same step saves (Orbax replaces the failed save's temporary directory).
  with checkpoint.manager(directory, keep=1) as mngr:
    checkpoint.save(mngr, 3, states[1], run.config())
    assert mngr.all_steps() == [2, 3]  # step 1 removed; 2 kept as the best
  checkpoint.verify(directory / "3")


# --- a whole training run ------------------------------------------------------------------------

def _damaged_copy(uninterrupted, destination: pathlib.Path) -> pathlib.Path:
  """A copy of the tiny run whose latest checkpoint has a truncated data file."""
  workdir, _, _ = uninterrupted
  shutil.copytree(workdir, destination)
  _truncate(_largest_data_file(destination / "checkpoints" / str(TOTAL_STEPS)))
  return destination


@pytest.mark.slow  # trains the tiny run (conftest.uninterrupted) and one more epoch of it
def test_truncated_latest_checkpoint_resumes_from_the_previous_and_matches(uninterrupted,
                                                                          tmp_path, caplog):
  ref_workdir, config, _ = uninterrupted
  for step_dir in (ref_workdir / "checkpoints").iterdir():
    if step_dir.name.isdigit():
      assert checkpoint.has_manifest(step_dir)
      checkpoint.verify(step_dir)  # what training wrote, retention included, checks out
  workdir = _damaged_copy(uninterrupted, tmp_path / "run")
  caplog.set_level(logging.INFO, logger="absl")
  train.train_and_evaluate(specs.run_spec(config), workdir)
  [warning] = _damage_warnings(caplog)
  assert f"damaged checkpoint of step {TOTAL_STEPS}: state/" in warning
  assert (workdir / "checkpoints" / f"{TOTAL_STEPS}.damaged").is_dir()
  assert any(f"Resuming from {workdir / 'checkpoints' / str(TOTAL_STEPS - STEPS_PER_EPOCH)}"
             in r.getMessage() for r in caplog.records)
  assert_identical(restore_state(workdir, config), restore_state(ref_workdir, config))
  last = lambda d: json.loads((d / "evals.jsonl").read_text().splitlines()[-1])
  assert last(workdir) == last(ref_workdir)


@pytest.mark.slow  # the tiny run (conftest.uninterrupted); launch.py and infer in subprocesses
def test_every_command_on_a_damaged_checkpoint_is_one_line(uninterrupted, tiny_config_file,
                                                           tmp_path, capsys):
  workdir = _damaged_copy(uninterrupted, tmp_path / "run")
  damaged = f"{workdir / 'checkpoints' / str(TOTAL_STEPS)}: damaged checkpoint of step " \
            f"{TOTAL_STEPS}"
  intact = (f"the newest intact checkpoint is "
            f"{workdir / 'checkpoints' / str(TOTAL_STEPS - STEPS_PER_EPOCH)}")

  result = subprocess.run([sys.executable, "launch.py", f"--config={tiny_config_file}",
                           f"--workdir={workdir}", "--mode=eval"], cwd=ROOT,
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)
  assert result.returncode == 1
  errors = [line for line in result.stderr.splitlines() if line.startswith("E")]
  assert len(errors) == 1 and damaged in errors[0] and intact in errors[0], result.stderr[-3000:]
  assert "Traceback" not in result.stderr

  assert eval_checkpoint.main(["--checkpoint", str(workdir)]) == 1
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith(f"error: {damaged}") and intact in err

  # The report reads the best checkpoint's generator for its samples: damage that one.
  best = workdir / "best"
  shutil.copytree(uninterrupted[0], best)
  with checkpoint.manager(best / "checkpoints", read_only=True) as mngr:
    best_step = mngr.best_step()
  _flip_byte(_largest_data_file(best / "checkpoints" / str(best_step)))
  assert report.main([f"--workdir={best}", f"--out={tmp_path / 'report'}"]) == 1
  err = capsys.readouterr().err
  assert err.count("\n") == 1
  assert err.startswith(f"error: {best / 'checkpoints' / str(best_step)}: damaged checkpoint")

  # Without a manifest (written before manifests), the damage shows when Orbax reads the data:
  # still one line, without the event-loop tracebacks of the reads the failed restore abandoned.
  old = workdir / "old"
  shutil.copytree(uninterrupted[0], old)
  step_dir = old / "checkpoints" / str(TOTAL_STEPS)
  (step_dir / checkpoint.MANIFEST).unlink()
  for path in (step_dir / "state").rglob("*"):
    if path.is_file() and path.parent.name == "d":
      _truncate(path)
  image = tmp_path / "image.png"
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
  result = subprocess.run([sys.executable, "-m", "ttsr_jax.infer", "--checkpoint", str(old),
                           "--lr", str(image), "--ref", str(image), "--out",
                           str(tmp_path / "o.png")], cwd=ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 1
  assert result.stderr.count("\n") == 1, result.stderr[-3000:]
  assert result.stderr.startswith(f"error: {step_dir}: damaged checkpoint of step {TOTAL_STEPS}: "
                                  "state: cannot be restored (")
  assert f"the newest intact checkpoint is {old / 'checkpoints'}" in result.stderr


def test_writes_abandoned_by_a_failed_save_are_not_reported_again(tmp_path, caplog):
  def abandon(error: Exception) -> None:
    # A write's future whose error nobody retrieves, as a failed Orbax save leaves them.
    loop = asyncio.new_event_loop()
    future = loop.create_future()
    future.set_exception(error)
    del future
    gc.collect()
    loop.close()

  checkpoint.manager(tmp_path / "checkpoints").close()
  with caplog.at_level(logging.ERROR, logger="asyncio"):
    abandon(ValueError('OUT_OF_RANGE: Error writing "d_params.conv1.bias/0" in OCDBT database'))
    assert not caplog.records
    abandon(RuntimeError("any other failure"))  # still reported
    [record] = caplog.records
    assert record.getMessage().startswith("Future exception was never retrieved")


@pytest.mark.slow  # the tiny run (conftest.uninterrupted), then one more epoch in launch.py
def test_failing_save_stops_training_with_one_line_and_keeps_the_earlier_checkpoints(
    uninterrupted, tiny_config_file, tmp_path):
  ref_workdir, config, _ = uninterrupted
  workdir = tmp_path / "run"
  shutil.copytree(ref_workdir, workdir)
  # One more epoch, then its checkpoint, on a "full disk"; the compiled steps stay the same. The
  # limit is set from outside (prlimit) once the process runs: a preexec_fn would fork this
  # multithreaded process.
  process = subprocess.Popen(
      [sys.executable, "launch.py", f"--config={tiny_config_file}", f"--workdir={workdir}",
       "--config.num_epochs=3"], cwd=ROOT, env=subprocess_env(), stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE, text=True)
  try:
    resource.prlimit(process.pid, resource.RLIMIT_FSIZE,
                     (FILE_SIZE_LIMIT, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    stderr = process.communicate(timeout=600)[1]
  finally:
    process.kill()
  end = TOTAL_STEPS + STEPS_PER_EPOCH
  assert process.returncode == 1, stderr[-3000:]
  errors = [line for line in stderr.splitlines() if line.startswith("E")]
  assert len(errors) == 1, stderr[-3000:]
  assert (f"{workdir / 'checkpoints' / str(end)}: cannot save the checkpoint of step {end} ("
          in errors[0])
  assert "File too large" in errors[0]
  assert "Traceback" not in stderr
  with checkpoint.manager(workdir / "checkpoints", read_only=True) as mngr:
    assert mngr.all_steps() == [TOTAL_STEPS - STEPS_PER_EPOCH, TOTAL_STEPS]
  assert_identical(restore_state(workdir, config), restore_state(ref_workdir, config))
