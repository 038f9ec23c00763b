"""The experiment report of two tiny runs: tables with the numbers of the events, plots, sample
grids from the best checkpoint, and partial reports of incomplete workdirs.

The runs are real: a copy of the session's tiny all-losses run (conftest.uninterrupted), and one
with the reconstruction loss only that stops after its warm-up epoch and is resumed, so its
events span two files. The tests that read them are slow.
"""

import json
import pathlib
import re
import shutil

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from data_pipeline import cufed5
from tiny_runs import STEPS_PER_EPOCH
from ttsr_jax import plots
from ttsr_jax import predict
from ttsr_jax import report
from ttsr_jax import runs as runs_lib
from ttsr_jax import specs
from ttsr_jax import train

NUM_SAMPLES = 2  # the tiny dataset's CUFED5 has two images
PLOT_PIXELS = tuple(round(inches * plots.PLOT_DPI) for inches in plots.PLOT_SIZE)


@pytest.fixture(scope="session")
def runs(uninterrupted,
         tmp_path_factory) -> dict[str, tuple[pathlib.Path, ml_collections.ConfigDict]]:
  """{name: (workdir, config)}: 'all_losses' (1 warm-up + 2 epochs, then an eval-mode
  evaluation of its best checkpoint) and 'rec_only' (1 warm-up + 1 epoch, in two launches).

  rec_only's warm-up and main steps are the same program as all_losses' warm-up step (the
  reconstruction loss alone, on the same schedule), so XLA's cache compiles nothing new."""
  trained, config, _ = uninterrupted
  directory = tmp_path_factory.mktemp("report")
  rec = config.copy_and_resolve_references()
  rec.loss.update(per_w=0.0, tpl_w=0.0, adv_w=0.0)
  rec.num_epochs = 1
  runs = {"all_losses": (directory / "all_losses", config),
          "rec_only": (directory / "rec_only", rec)}
  shutil.copytree(trained, runs["all_losses"][0])  # the copy gets the eval-mode evaluation
  train.evaluate(specs.run_spec(config), runs["all_losses"][0], "best")
  first_launch = rec.copy_and_resolve_references()
  first_launch.num_epochs = 0  # the warm-up epoch only
  train.train_and_evaluate(specs.run_spec(first_launch), runs["rec_only"][0])
  train.train_and_evaluate(specs.run_spec(rec), runs["rec_only"][0])
  return runs


@pytest.fixture(scope="session")
def written(runs, tmp_path_factory) -> tuple[pathlib.Path, str]:
  """(report directory, README text) of both runs."""
  out = tmp_path_factory.mktemp("report_out")
  readme, _ = report.write_report([workdir for workdir, _ in runs.values()], out, NUM_SAMPLES)
  return out, readme.read_text()


def _events(workdir: pathlib.Path) -> tuple[dict[str, dict[int, float]],
                                             dict[tuple[str, int], np.ndarray]]:
  """({scalar tag: {step: value}}, {(image tag, step): image}), read with TF's own reader."""
  plugins, tensors = {}, {}
  for path in sorted((workdir / "tensorboard").glob("events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      for value in event.summary.value:
        # The plugin is named in a tag's first event at least.
        plugins[value.tag] = plugins.get(value.tag) or value.metadata.plugin_data.plugin_name
        tensors.setdefault(value.tag, {})[event.step] = value.tensor
  scalars = {tag: {step: float(tf.make_ndarray(t)) for step, t in tensors[tag].items()}
             for tag, plugin in plugins.items() if plugin == "scalars"}
  images = {(tag, step): tf.io.decode_png(t.string_val[2]).numpy()
            for tag, plugin in plugins.items() if plugin == "images"
            for step, t in tensors[tag].items()}
  return scalars, images


def _row(text: str, section: str, first_cell: str) -> list[str]:
  """The cells of the first table row under `## section` that starts with `first_cell`."""
  body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
  for line in body.splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if line.startswith("|") and cells[0] == first_cell:
      return cells
  raise AssertionError(f"no row {first_cell!r} under {section!r} in:\n{text}")


@pytest.mark.slow  # reads two tiny training runs
def test_results_table_has_the_numbers_of_the_events(runs, written):
  _, text = written
  for name, (workdir, _) in runs.items():
    scalars, _ = _events(workdir)
    psnr, ssim = scalars["eval/level1/psnr"], scalars["eval/level1/ssim"]
    best, final = max(psnr, key=psnr.get), max(psnr)
    # The loop's own record of its evaluations agrees with the events (float32 there: within
    # u = 6e-8 relative).
    evals = [json.loads(line) for line in (workdir / "evals.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == list(psnr)
    np.testing.assert_allclose([e["level1/psnr"] for e in evals], list(psnr.values()), rtol=1e-7)
    when = lambda step: f"epoch {step // STEPS_PER_EPOCH} (step {step})"
    assert _row(text, "Results", name) == [
        name, "level1", f"{psnr[best]:.3f}", f"{ssim[best]:.4f}", when(best),
        f"{psnr[final]:.3f}", f"{ssim[final]:.4f}", when(final),
        f"{scalars['eval/level1/bicubic_psnr'][final]:.3f}",
        f"{scalars['eval/level1/bicubic_ssim'][final]:.4f}"]
  assert "| TTSR-rec (released TTSR-rec.pt, eval.sh) | level1 | 26.99 | 0.800 |" in text
  assert "| TTSR (released TTSR.pt, eval.sh) | level1 | 25.40 | 0.760 |" in text

  # The eval-mode evaluation of all_losses' best checkpoint.
  workdir = runs["all_losses"][0]
  (record_path,) = workdir.glob("eval_*.json")
  record = json.loads(record_path.read_text())
  assert (f"| all_losses | `{record['checkpoint']}` | ttsr | level1 | "
          f"{record['level1/psnr']:.3f} | {record['level1/ssim']:.4f} |") in text


@pytest.mark.slow  # reads two tiny training runs
def test_configuration_table(runs, written):
  _, text = written
  config = lambda label: _row(text, "Configuration", label)[1:]
  assert config("") == ["all_losses", "rec_only"]
  expected = {
      "batch size (global)": ["2", "2"],
      "epochs: warm-up + main": ["1 + 2", "1 + 1"],
      "loss weights: rec / per / tpl / adv": ["1 / 0.01 / 0.01 / 0.001", "1 / 0 / 0 / 0"],
      "model: n_feats, residual blocks": ["8, (1, 1, 1, 1)"] * 2,
      "LTE 256->64 conv (Exp1-3)": ["no", "no"],
      "VGG19 weights": ["random init"] * 2,
      "training patch (HR)": ["32", "32"],
      "devices": [str(jax.device_count())] * 2,
      "steps trained": [str(3 * STEPS_PER_EPOCH), str(2 * STEPS_PER_EPOCH)],
      "epoch length (steps)": [str(STEPS_PER_EPOCH)] * 2,
      "config from": [f"checkpoint step {3 * STEPS_PER_EPOCH}",
                      f"checkpoint step {2 * STEPS_PER_EPOCH}"],
  }
  for label, values in expected.items():
    assert config(label) == values, label
  all_losses, rec_only = config("wall-clock train time")
  assert re.fullmatch(r"\d+ min \d\d s \(1 launch\)", all_losses)
  assert re.fullmatch(r"\d+ min \d\d s \(2 launches\)", rec_only)
  assert "## Missing parts" not in text


def _colour_pixels(image: np.ndarray, colour: str) -> int:
  rgb = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
  return int(np.all(image[..., :3] == rgb, axis=-1).sum())


@pytest.mark.slow  # reads two tiny training runs
def test_plots_overlay_the_runs(written):
  out, text = written
  embedded = re.findall(r"!\[[^]]*\]\((plots/[^)]+\.png)\)", text)
  names = {pathlib.Path(p).stem for p in embedded}
  assert {"eval_level1_psnr", "eval_level1_ssim", "train_loss_rec", "train_loss_per",
          "train_loss_tpl", "train_loss_adv", "train_loss_total", "train_d_real",
          "train_lr_main"} <= names
  assert not any(name.endswith("_weighted") for name in names)
  for path in embedded:
    image = np.asarray(Image.open(out / path))
    assert image.shape[1::-1] == PLOT_PIXELS, path
    assert image.std() > 0, path
  # Matplotlib's first two colours: all_losses (C0) and rec_only (C1); only all_losses has an
  # adversarial loss.
  blue, orange = "#1f77b4", "#ff7f0e"
  rec = np.asarray(Image.open(out / "plots" / "train_loss_rec.png"))
  assert _colour_pixels(rec, blue) > 50 and _colour_pixels(rec, orange) > 50
  adv = np.asarray(Image.open(out / "plots" / "train_loss_adv.png"))
  assert _colour_pixels(adv, blue) > 50 and _colour_pixels(adv, orange) == 0


@pytest.mark.slow  # reads two tiny training runs
def test_samples_come_from_the_best_checkpoint(runs, written):
  out, text = written
  for name, (workdir, config) in runs.items():
    scalars, logged = _events(workdir)
    psnr = scalars["eval/level1/psnr"]
    best = max(psnr, key=psnr.get)
    assert f"Checkpoint `{workdir / 'checkpoints' / str(best)}`." in text
    batches = list(cufed5.level_samples(config.data.cufed_dir, 1))
    assert len(batches) == NUM_SAMPLES
    grids = {}
    for image_name, batch in batches:
      assert f"![{image_name}](samples/{name}/{image_name}.png)" in text
      grid = grids[image_name] = np.asarray(Image.open(out / "samples" / name /
                                                       f"{image_name}.png"))
      hr = np.round((batch["hr"][0] + 1) * 127.5).astype(np.uint8)
      lr = np.round((batch["lr"][0] + 1) * 127.5).astype(np.uint8)
      assert grid.shape[0] == predict.CAPTION_HEIGHT + hr.shape[0]
      grid = grid[predict.CAPTION_HEIGHT:]  # below the captions
      np.testing.assert_array_equal(grid[:, :hr.shape[1]], lr.repeat(4, axis=0).repeat(4, axis=1))
      np.testing.assert_array_equal(grid[:, -hr.shape[1]:], hr)
    # The loop's grid of the first test image at the best step (config.eval.num_image_grids is
    # 1) shows the same reference and output; only its LR panel, bicubic there, differs.
    image_name, batch = batches[0]
    width = batch["hr"].shape[2]
    tensorboard = logged[f"eval/level1/{image_name}", best]
    assert tensorboard.shape == grids[image_name].shape
    np.testing.assert_array_equal(tensorboard[:, width:], grids[image_name][:, width:])
    assert not np.array_equal(tensorboard[:, :width], grids[image_name][:, :width])


@pytest.mark.slow  # reads two tiny training runs
def test_samples_of_a_run_stored_before_the_precision_policy(runs, written, tmp_path):
  # Workdirs written before `model.precision` existed stored `model.dtype` instead; their samples
  # use today's default policy, 'exact', which is what this run trained with.
  out, _ = written
  run = runs_lib.load_run(runs["rec_only"][0], "rec_only")
  assert run.config["model"].pop("precision") == "exact"
  run.config["model"]["dtype"] = "float32"
  assert report.sampling_config(run.config).model.precision == "exact"
  paths = report.render_samples(run, tmp_path, 1)
  assert len(paths) == 1
  np.testing.assert_array_equal(np.asarray(Image.open(paths[0])),
                                np.asarray(Image.open(out / "samples" / "rec_only" /
                                                      paths[0].name)))


@pytest.mark.slow  # reads two tiny training runs
def test_incomplete_workdirs_give_a_partial_report(runs, tmp_path, monkeypatch, capsys):
  # Relative paths, as users type them (Orbax itself wants absolute ones).
  monkeypatch.chdir(tmp_path)
  events_only, checkpoints_only = pathlib.Path("events_only"), pathlib.Path("checkpoints_only")
  shutil.copytree(runs["all_losses"][0] / "tensorboard", events_only / "tensorboard")
  shutil.copytree(runs["rec_only"][0] / "checkpoints", checkpoints_only / "checkpoints")
  out = pathlib.Path("out")
  assert report.main([f"--workdir={events_only}", f"--workdir={checkpoints_only}",
                      f"--out={out}", "--num_samples=1"]) == 0
  stderr = capsys.readouterr().err
  no_checkpoints = f"{events_only / 'checkpoints'}: no checkpoints directory"
  no_events = f"{checkpoints_only / 'tensorboard'}: no TensorBoard event files"
  assert f"warning: {no_checkpoints}" in stderr and f"warning: {no_events}" in stderr
  text = (out / "README.md").read_text()
  assert f"- **events_only**: {no_checkpoints}" in text
  assert f"- **checkpoints_only**: {no_events}" in text
  # The config of the first from its TensorBoard hparams, of the second from its checkpoint.
  config = lambda label: _row(text, "Configuration", label)[1:]
  assert config("config from") == ["TensorBoard hparams", f"checkpoint step {2 * STEPS_PER_EPOCH}"]
  assert config("loss weights: rec / per / tpl / adv") == ["1 / 0.01 / 0.01 / 0.001",
                                                           "1 / 0 / 0 / 0"]
  assert config("devices") == ["—", str(jax.device_count())]
  # Results and curves of the first (without evals.jsonl, by step), samples of the second.
  psnr = _events(events_only)[0]["eval/level1/psnr"]
  best = max(psnr, key=psnr.get)
  cells = _row(text, "Results", "events_only")
  assert cells[1:3] == ["level1", f"{psnr[best]:.3f}"] and cells[4] == f"step {best}"
  assert (out / "plots" / "train_loss_adv.png").is_file()
  assert len(list((out / "samples").rglob("*.png"))) == 1
  assert (out / "samples" / "checkpoints_only").is_dir()


def test_nothing_to_report_fails(tmp_path, capsys):
  (tmp_path / "empty").mkdir()
  out = tmp_path / "out"
  assert report.main([f"--workdir={tmp_path / 'empty'}", f"--workdir={tmp_path / 'missing'}",
                      f"--out={out}"]) == 1
  stderr = capsys.readouterr().err
  assert stderr.startswith("error: nothing to report: ")
  assert f"{tmp_path / 'empty' / 'tensorboard'}: no TensorBoard event files" in stderr
  assert f"{tmp_path / 'missing'}: no such directory" in stderr
  assert not out.exists()
