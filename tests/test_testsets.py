"""The test sets besides CUFED5 (data_pipeline/testsets.py) on tiny folders in each published
layout: readers, pairing errors, the protocol choices, the combined table, and one end-to-end
evaluation of all five sets through `python -m ttsr_jax.eval_checkpoint`."""

import json
import pathlib
import shutil

import jax
import numpy as np
import pytest
from PIL import Image

from configs import default
from data_pipeline import files
from data_pipeline import samples
from data_pipeline import testsets
from ttsr_jax import compile_cache
from ttsr_jax import convert
from ttsr_jax import eval_checkpoint
from ttsr_jax import evaluate
from ttsr_jax import metrics
from ttsr_jax import report
from ttsr_jax import specs
from tiny_configs import random_params

# Test images are not multiples of 4. Every reference, the LR images included, is 12 x 12, so
# the end-to-end evaluation compiles the model for one input shape only.
HR_HW, REF_HW = (50, 49), (12, 12)


def _write(path: pathlib.Path, seed: int, hw=HR_HW) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  pixels = np.random.default_rng(seed).integers(0, 256, (*hw, 3), dtype=np.uint8)
  Image.fromarray(pixels).save(path)
  return path


def _make_root(root: pathlib.Path) -> pathlib.Path:
  """CUFED/test/CUFED5 and TEST_DIR/{Sun80,Urban100,Manga109,WR-SR} with tiny random images."""
  for level in range(6):
    _write(root / "CUFED" / "test" / "CUFED5" / f"000_{level}.png", level,
           HR_HW if level == 0 else REF_HW)
  sun80 = root / "testsets" / "Sun80"
  for i, name in enumerate(("a.jpg", "b.jpg")):
    _write(sun80 / testsets.SUN80_IMAGES / name, 10 + i)
    for j in range(3):
      _write(sun80 / testsets.SUN80_REFERENCES / name / f"{j:02d}.jpg", 20 + 3 * i + j, REF_HW)
  for i in range(2):
    _write(root / "testsets" / "Urban100" / "HR" / f"img{i:03d}.png", 30 + i)
  for i in range(3):
    _write(root / "testsets" / "Manga109" / f"Title{i}.png", 40 + i)
  _write(root / "testsets" / "WR-SR" / "input" / "001.png", 50)
  _write(root / "testsets" / "WR-SR" / "ref" / "001_ref.png", 51, REF_HW)
  return root


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> pathlib.Path:
  return _make_root(tmp_path_factory.mktemp("testsets"))


def _copy(root: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
  return pathlib.Path(shutil.copytree(root / "testsets", tmp_path / "testsets"))


def test_sun80_first_or_a_seeded_random_web_reference(root):
  test_dir = root / "testsets"
  refs_dir = test_dir / "Sun80" / testsets.SUN80_REFERENCES
  first = testsets.sun80_pairs(test_dir, "first")
  assert [(p.name, p.hr.name, p.ref) for p in first] == [
      ("a", "a.jpg", refs_dir / "a.jpg" / "00.jpg"), ("b", "b.jpg", refs_dir / "b.jpg" / "00.jpg")]
  draws = {seed: [p.ref for p in testsets.sun80_pairs(test_dir, "random", seed)]
           for seed in range(8)}
  assert draws[3] == [p.ref for p in testsets.sun80_pairs(test_dir, "random", 3)]
  assert all(ref.parent == refs_dir / f"{name}.jpg"
             for refs in draws.values() for ref, name in zip(refs, "ab"))
  assert len({tuple(refs) for refs in draws.values()}) > 1  # the seed changes the draw


def test_urban100_uses_its_own_lr_as_reference(root):
  pairs = testsets.urban100_pairs(root / "testsets")  # from Urban100/HR/
  assert [(p.name, p.ref) for p in pairs] == [("img000", None), ("img001", None)]
  batch = testsets.read_pair(pairs[0])
  np.testing.assert_array_equal(batch["ref"], batch["lr"])
  lr_u8 = samples.down_up(samples.crop_to_multiple(files.read_rgb(pairs[0].hr)))[0]
  np.testing.assert_array_equal(batch["refsr"][0], samples.normalize(samples.down_up(lr_u8)[1]))


def test_manga109_reference_choices(root, tmp_path):
  test_dir = root / "testsets"
  pairs = testsets.manga109_pairs(test_dir, "random_hr", seed=0)  # flat Manga109/
  names = [p.hr.name for p in pairs]
  assert names == ["Title0.png", "Title1.png", "Title2.png"]
  for seed in range(5):
    for pair in testsets.manga109_pairs(test_dir, "random_hr", seed):
      assert pair.ref.name in names and pair.ref != pair.hr
  assert [p.ref for p in testsets.manga109_pairs(test_dir, "lr")] == [None] * 3
  single = tmp_path / "single"
  _write(single / "Manga109" / "Only.png", 0)
  with pytest.raises(files.DatasetError, match="Manga109: one image, expected at least 2"):
    testsets.manga109_pairs(single, "random_hr")
  with pytest.raises(ValueError, match="expected one of"):
    testsets.manga109_pairs(test_dir, "hr")


def test_sizes_crop_or_edge_pad(root):
  (pair,) = testsets.wrsr_pairs(root / "testsets")
  cropped = testsets.read_pair(pair, "crop")
  assert cropped["hr"].shape == (1, 48, 48, 3) and cropped["lrsr"].shape == (1, 48, 48, 3)
  padded = testsets.read_pair(pair, "pad")
  hr = files.read_rgb(pair.hr)
  np.testing.assert_array_equal(padded["hr"][0], samples.normalize(hr))  # scored whole
  assert padded["lr"].shape == (1, 13, 13, 3) and padded["lrsr"].shape == (1, 52, 52, 3)
  edge = np.pad(hr, ((0, 2), (0, 3), (0, 0)), mode="edge")
  np.testing.assert_array_equal(padded["lr"][0], samples.normalize(samples.down_up(edge)[0]))
  np.testing.assert_array_equal(padded["ref"], cropped["ref"])


def test_missing_references_name_the_file(root, tmp_path):
  test_dir = _copy(root, tmp_path)
  (test_dir / "WR-SR" / "ref" / "001_ref.png").unlink()
  with pytest.raises(files.MissingDataError,
                     match=r"WR-SR/ref/001_ref.png: reference missing, expected the reference of "
                     r"input/001.png"):
    testsets.wrsr_pairs(test_dir)
  shutil.rmtree(test_dir / "Sun80" / testsets.SUN80_REFERENCES / "b.jpg")
  with pytest.raises(files.MissingDataError,
                     match=r"Sun_Hays_SR_scenematches/b.jpg: reference folder missing, expected "
                     r"the web references of Sun_Hays_SR_groundtruth/b.jpg"):
    testsets.sun80_pairs(test_dir)
  shutil.rmtree(test_dir / "Urban100")
  with pytest.raises(files.MissingDataError, match="Urban100: directory not found"):
    testsets.urban100_pairs(test_dir)


def test_results_table_lists_each_set_and_protocol_with_bicubic():
  config = default.get_config()
  config.eval.update(sets="cufed5,sun80,manga109", multi_reference=True, protocol="mmagic",
                     y_channel=True, reference_seed=7)
  results = {f"{name}/{score}": value for name, base in
             (("level1", 26.0), ("multi_reference", 27.0), ("sun80", 30.0), ("manga109", 28.0))
             for score, value in zip(evaluate.SCORES, (base, 0.8, base - 2, 0.7))}
  images = {"level1": 126, "multi_reference": 126, "sun80": 80, "manga109": 109}
  spec = specs.eval_spec(config)
  table = evaluate.results_table(evaluate.evaluate_record(spec, results, images, checkpoint="c"))
  assert table[0].startswith("Metric 'mmagic': Y channel, 4 pixels shaved per side; sides not "
                             "multiples of 4 cropped at the bottom and right")
  assert table[2] == ("| set | protocol | images | reference | PSNR | SSIM | bicubic PSNR | "
                      "bicubic SSIM |")
  assert table[4:] == [
      "| CUFED5 | level1 | 126 | its level-1 reference | 26.000 | 0.8000 | 24.000 | 0.7000 |",
      "| CUFED5 | multi_reference | 126 | its five references stitched (2500 x 500) | 27.000 | "
      "0.8000 | 25.000 | 0.7000 |",
      "| Sun80 | sun80 | 80 | one of its web references, drawn (seed 7) | 30.000 | 0.8000 | "
      "28.000 | 0.7000 |",
      "| Manga109 | manga109 | 109 | another image of the set, drawn (seed 7) | 28.000 | 0.8000 | "
      "26.000 | 0.7000 |"]
  # Records written before the counts were recorded show a dash.
  old_record = evaluate.evaluate_record(spec, results, images)
  del old_record["images"]
  assert evaluate.results_table(old_record)[4].startswith("| CUFED5 | level1 | — | its level-1")


def test_command_evaluates_every_set_from_a_state_dict(root, tmp_path, capsys):
  params = random_params()
  state_dict = tmp_path / "tiny.npz"
  np.savez(state_dict, **convert.export_state_dict(params))
  out = tmp_path / "out" / "results.json"
  args = ["--checkpoint", state_dict, "--cufed_dir", root / "CUFED", "--test_dir",
          root / "testsets", "--sets", "cufed5,sun80,urban100,manga109,wrsr", "--out", out,
          "--manga109_reference", "lr"]  # another HR image would be a second model shape
  assert eval_checkpoint.main([str(a) for a in args]) == 0
  captured = capsys.readouterr()
  record = json.loads(out.read_text())
  names = ["level1", "sun80", "urban100", "manga109", "wrsr"]
  assert [k[:-len("/psnr")] for k in record if k.endswith("/psnr")] == names
  assert record["checkpoint"] == str(state_dict) and record["eval"]["sets"] == args[7]
  assert record["step"] is None and record["protocol"] == "ttsr"  # a state dict has no step
  assert record["images"] == {"level1": 1, "sun80": 2, "urban100": 2, "manga109": 3, "wrsr": 1}
  table = captured.out.splitlines()
  assert [line.split(" | ")[1] for line in table[4:]] == names
  # Bicubic beside each: the upsampled LR input under the same ('ttsr') metric.
  batch = testsets.read_pair(testsets.urban100_pairs(root / "testsets")[1])
  psnr, _ = metrics.calc_psnr_and_ssim(batch["lrsr"], batch["hr"])
  first = testsets.read_pair(testsets.urban100_pairs(root / "testsets")[0])
  expected = np.mean([psnr, metrics.calc_psnr_and_ssim(first["lrsr"], first["hr"])[0]])
  assert record["urban100/bicubic_psnr"] == pytest.approx(expected, rel=1e-12)  # float64 means
  assert all(np.isfinite(record[f"{n}/psnr"]) and -1 <= record[f"{n}/ssim"] <= 1 for n in names)
  assert "eval urban100" in captured.err  # its progress bar

  (root_copy := tmp_path / "broken").mkdir()
  shutil.rmtree(_copy(root, root_copy) / "WR-SR" / "ref")
  args[5] = root_copy / "testsets"
  assert eval_checkpoint.main([str(a) for a in args]) == 1
  assert capsys.readouterr().err.strip() == (
      f"error: {root_copy / 'testsets' / 'WR-SR' / 'ref' / '001_ref.png'}: reference missing, "
      "expected the reference of input/001.png")


def test_report_shows_the_combined_table_of_eval_files(tmp_path):
  config = default.get_config()
  config.eval.sets = "urban100,wrsr"
  results = {f"{name}/{score}": 20.0 for name in ("urban100", "wrsr") for score in evaluate.SCORES}
  workdir = tmp_path / "run"
  workdir.mkdir()
  record = evaluate.evaluate_record(specs.eval_spec(config), results, {"urban100": 100, "wrsr": 80},
                                    checkpoint="ckpt/7", step=7)
  (workdir / "eval_7.json").write_text(json.dumps(record))
  readme, _ = report.write_report([workdir], tmp_path / "report", num_samples=0)
  text = readme.read_text()
  assert "Results table of `ckpt/7` (run):" in text
  for line in evaluate.results_table(record):
    assert line in text.splitlines()


def _state_dict(tmp_path: pathlib.Path) -> pathlib.Path:
  path = tmp_path / "tiny.npz"
  np.savez(path, **convert.export_state_dict(random_params()))
  return path


def test_command_decodes_every_image_before_evaluating(root, tmp_path, capsys):
  broken = _copy(root, tmp_path)
  truncated = broken / "Urban100" / "HR" / "img001.png"
  truncated.write_bytes(truncated.read_bytes()[:200])
  (broken / "WR-SR" / "ref" / "001_ref.png").write_bytes(b"not an image")
  out = tmp_path / "results.json"
  args = ["--checkpoint", _state_dict(tmp_path), "--cufed_dir", root / "CUFED", "--test_dir",
          broken, "--sets", "cufed5,sun80,urban100,wrsr", "--out", out]
  assert eval_checkpoint.main([str(a) for a in args]) == 1
  captured = capsys.readouterr()
  errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
  assert [line.split(": ")[1] for line in errors[:2]] == [
      str(truncated), str(broken / "WR-SR" / "ref" / "001_ref.png")]
  assert errors[2] == ("error: 2 of 10 test image files cannot be used; replace or remove them "
                       "(nothing was evaluated)")
  # CUFED5 level 1: 2 files; Sun80: 2 images and their drawn references; Urban100 2; WR-SR 2.
  # Stopped before the first model call: no set was scored, no progress bar started.
  assert not out.exists() and captured.out == "" and "eval level1" not in captured.err


def test_command_keeps_the_sets_scored_before_an_error_and_skips_missing_sets(
    root, tmp_path, capsys, monkeypatch):
  test_dir = _copy(root, tmp_path)
  shutil.rmtree(test_dir / "Sun80")
  out = tmp_path / "results.json"
  args = ["--checkpoint", _state_dict(tmp_path), "--cufed_dir", root / "CUFED", "--test_dir",
          test_dir, "--sets", "cufed5,sun80,urban100,wrsr", "--out", out]
  assert eval_checkpoint.main([str(a) for a in args]) == 1  # Sun80 is missing
  assert capsys.readouterr().err.startswith(f"error: {test_dir / 'Sun80'}")

  # A file that breaks after the decode check (here: WR-SR's input, read third) fails the run
  # while it evaluates; what was scored before is in the table and the JSON.
  read_pair = testsets.read_pair

  def failing_read_pair(pair, sizes="crop"):
    if pair.hr.parent.name == "input":
      raise files.DatasetError(f"{pair.hr}: unreadable")
    return read_pair(pair, sizes)

  monkeypatch.setattr(testsets, "read_pair", failing_read_pair)
  assert eval_checkpoint.main([str(a) for a in [*args, "--skip_missing"]]) == 1
  captured = capsys.readouterr()
  err = captured.err.splitlines()
  assert err[0] == (f"skipped Sun80: {test_dir / 'Sun80' / testsets.SUN80_IMAGES}: directory "
                    "not found, expected a directory of images")
  assert f"error: {test_dir / 'WR-SR' / 'input' / '001.png'}: unreadable" in err
  record = json.loads(out.read_text())
  assert record["eval"]["sets"] == "cufed5,urban100,wrsr"
  assert record["images"] == {"level1": 1, "urban100": 2}
  assert list(record["skipped"]) == ["sun80"]
  assert [k for k in record if k.endswith("/psnr")] == ["level1/psnr", "urban100/psnr"]
  assert [line.split(" | ")[1] for line in captured.out.splitlines()[4:]] == ["level1",
                                                                               "urban100"]


def test_command_ctrl_c_keeps_the_scored_sets(root, tmp_path, capsys, monkeypatch):
  def interrupted(pair, sizes="crop"):
    raise KeyboardInterrupt

  monkeypatch.setattr(testsets, "read_pair", interrupted)  # Urban100, after CUFED5's level 1
  out = tmp_path / "results.json"
  args = ["--checkpoint", _state_dict(tmp_path), "--cufed_dir", root / "CUFED", "--test_dir",
          root / "testsets", "--sets", "cufed5,urban100", "--out", out]
  assert eval_checkpoint.main([str(a) for a in args]) == 130
  captured = capsys.readouterr()
  assert "interrupted" in captured.err.splitlines()
  assert json.loads(out.read_text())["images"] == {"level1": 1}
  assert [line.split(" | ")[1] for line in captured.out.splitlines()[4:]] == ["level1"]


def test_compile_cache_keeps_a_chosen_directory_else_uses_the_user_cache(tmp_path, monkeypatch):
  chosen = jax.config.jax_compilation_cache_dir
  assert chosen and compile_cache.enable() == chosen  # conftest's choice is kept
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  try:
    jax.config.update("jax_compilation_cache_dir", None)
    assert compile_cache.enable() == str(tmp_path / "ttsr_jax" / "xla")
    jax.config.update("jax_enable_compilation_cache", False)
    assert compile_cache.enable() is None
  finally:
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", chosen)
