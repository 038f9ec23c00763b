"""`python -m ttsr_jax.infer`: the reference's test mode bit for bit (case b), both checkpoint
kinds, export, folders and multi-reference stitching, and the one-line errors."""

import importlib.util
import pathlib
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from configs.default import get_config
from data_pipeline import samples
from ttsr_jax import generators
from ttsr_jax import convert
from ttsr_jax import infer
from ttsr_jax import predict
from ttsr_jax import specs
from ttsr_jax import step as step_lib
from ttsr_jax.models.ttsr import TTSR
from parity import load_case
from tiny_configs import TINY, random_params

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY_CONFIG = dict(TINY, lte_reduce_lv3=False)
LR_HW, REF_HW = (6, 5), (22, 17)  # few shapes: each new one costs a compilation


def _write_png(path: pathlib.Path, image: np.ndarray) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(image).save(path)
  return path


def _read_png(path: pathlib.Path) -> np.ndarray:
  return np.asarray(Image.open(path))


def _random_image(hw, seed: int) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (*hw, 3), dtype=np.uint8)


def _main(argv, capsys) -> tuple[int, str, str]:
  code = infer.main([str(a) for a in argv])
  captured = capsys.readouterr()
  return code, captured.out, captured.err


@pytest.fixture(scope="module")
def tiny_params():
  return random_params()


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory, tiny_params) -> pathlib.Path:
  path = tmp_path_factory.mktemp("tiny") / "tiny.npz"
  np.savez(path, **convert.export_state_dict(tiny_params))
  return path


def _write_orbax(workdir: pathlib.Path, g_params, model_overrides=None, step: int = 3) -> None:
  """A checkpoint in the layout checkpoint.py documents, with a whole TrainState."""
  config = get_config()
  config.model.update(TINY)
  config.model.update(model_overrides or {})
  g_tx, d_tx = step_lib.make_optimizers(specs.train_spec(config), steps_per_epoch=10)
  d_params = {"fc2": {"kernel": np.ones((4, 1), np.float32), "bias": np.zeros(1, np.float32)}}
  state = step_lib.TrainState(step=np.int32(step), g_params=g_params, d_params=d_params,
                              g_opt_state=g_tx.init(g_params), d_opt_state=d_tx.init(d_params),
                              key=np.asarray(jax.random.PRNGKey(0)))
  with ocp.CheckpointManager(workdir / "checkpoints") as manager:
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               config=ocp.args.JsonSave(config.to_dict())))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_params) -> pathlib.Path:
  path = tmp_path_factory.mktemp("workdir")
  _write_orbax(path, tiny_params)
  return path


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
  folder = tmp_path_factory.mktemp("pair")
  return (_write_png(folder / "lr.png", _random_image(LR_HW, 1)),
          _write_png(folder / "ref.png", _random_image(REF_HW, 2)))


def _tree_equal(a, b) -> bool:
  leaves_a, tree_a = jax.tree_util.tree_flatten(a)
  leaves_b, tree_b = jax.tree_util.tree_flatten(b)
  return tree_a == tree_b and all(np.array_equal(x, y) for x, y in zip(leaves_a, leaves_b))


# --- case b: the reference's test path, bit for bit --------------------------------------------

@pytest.fixture(scope="module")
def case_b_files(tmp_path_factory):
  case = load_case("b_forward_testpath.npz")
  folder = tmp_path_factory.mktemp("case_b")
  weights = folder / "a_weights.npz"
  np.savez(weights, **load_case("a_weights.npz"))
  return (case["sr_uint8"], weights, _write_png(folder / "lr.png", case["lr_uint8"]),
          _write_png(folder / "ref.png", case["ref_uint8"]))


def test_case_b_output_is_the_reference_png(case_b_files, tmp_path, capsys):
  want, weights, lr, ref = case_b_files
  out = tmp_path / "sr.png"
  code, stdout, _ = _main(["--checkpoint", weights, "--lr", lr, "--ref", ref, "--out", out],
                          capsys)
  assert code == 0
  assert "LR 52 x 36, reference 108 x 148 from 1 file" in stdout and "sr.png 208 x 144" in stdout
  np.testing.assert_array_equal(_read_png(out), want)


@pytest.mark.slow  # the CLI in a subprocess
def test_case_b_from_the_command_line(case_b_files, tmp_path):
  want, weights, lr, ref = case_b_files
  out = tmp_path / "cli" / "sr.png"
  result = subprocess.run(
      [sys.executable, "-m", "ttsr_jax.infer", "--checkpoint", weights, "--lr", lr, "--ref", ref,
       "--out", out, "--compare"], cwd=REPO, capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stderr
  np.testing.assert_array_equal(_read_png(out), want)
  compare = _read_png(tmp_path / "cli" / "sr_compare.png")
  # bicubic | TTSR | the 148x108 (cropped) reference resized to 144 rows: 105 columns, under
  # their captions
  assert compare.shape == (predict.CAPTION_HEIGHT + 144, 208 + 8 + 208 + 8 + 105, 3)
  np.testing.assert_array_equal(compare[predict.CAPTION_HEIGHT:, 216:424], want)


# --- checkpoints ---------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["workdir", "checkpoints", "step"])
def test_orbax_checkpoint_loads_generator_and_config(workdir, tiny_params, where):
  path = {"workdir": workdir, "checkpoints": workdir / "checkpoints",
          "step": workdir / "checkpoints" / "3"}[where]
  params, model = generators.load(path)
  assert model.architecture() == dict(TINY_CONFIG, res_scale=1.0)
  assert _tree_equal(params, tiny_params)


def test_orbax_and_state_dict_give_the_same_image(workdir, tiny_npz, tiny_params, pair, tmp_path,
                                                  capsys):
  lr, ref = pair
  for name, path in (("orbax", workdir), ("npz", tiny_npz)):
    code, _, err = _main(["--checkpoint", path, "--lr", lr, "--ref", ref,
                          "--out", tmp_path / f"{name}.png"], capsys)
    assert code == 0, err
  images = predict.prepare_inputs(_read_png(lr), _read_png(ref))
  want = predict.super_resolve(TTSR(**TINY, search_chunk_size=predict.DEFAULT_SEARCH_CHUNK_SIZE),
                             tiny_params, images).sr
  np.testing.assert_array_equal(_read_png(tmp_path / "orbax.png"), want)
  np.testing.assert_array_equal(_read_png(tmp_path / "npz.png"), want)


def test_search_chunk_size_does_not_change_the_image(tiny_npz, pair, tmp_path, capsys):
  lr, ref = pair
  for chunk in (0, 7):
    code, _, err = _main(["--checkpoint", tiny_npz, "--lr", lr, "--ref", ref, "--out",
                          tmp_path / f"{chunk}.png", "--search_chunk_size", chunk], capsys)
    assert code == 0, err
  np.testing.assert_array_equal(_read_png(tmp_path / "0.png"), _read_png(tmp_path / "7.png"))


def test_export_then_import_is_the_identity(workdir, tiny_params, tmp_path, capsys):
  out = tmp_path / "ttsr.npz"
  code, stdout, err = _main(["export", "--checkpoint", workdir, "--out", out], capsys)
  assert code == 0, err
  assert "n_feats 8, num_res_blocks 1+1+1+1" in stdout
  with np.load(out) as exported:
    assert {"LTE.sub_mean.weight", "MainNet.SFE.conv_head.weight"} <= set(exported.files)
  params, model = generators.load(out)
  assert model.architecture() == dict(TINY_CONFIG, res_scale=1.0)
  assert _tree_equal(params, tiny_params)


def test_export_to_pytorch_round_trip(workdir, tiny_params, tmp_path):
  pytest.importorskip("torch", reason="writing/reading .pt needs torch, an optional dependency")
  out = tmp_path / "ttsr.pt"
  generators.export(workdir, out)
  params, _ = generators.load(out)
  assert _tree_equal(params, tiny_params)


# --- folders and several references --------------------------------------------------------------

def test_folders_pair_by_name_and_stitch_several_references(tiny_npz, tiny_params, tmp_path,
                                                            capsys):
  lr_a = _write_png(tmp_path / "lr" / "a.png", _random_image(LR_HW, 3))
  lr_b = _write_png(tmp_path / "lr" / "b.png", _random_image(LR_HW, 4))
  ref_a = _write_png(tmp_path / "ref" / "a.png", _random_image(REF_HW, 5))
  refs_b = [_write_png(tmp_path / "ref" / "b" / f"{i}.png", _random_image(REF_HW, 6 + i))
            for i in range(2)]
  out = tmp_path / "out"
  code, stdout, err = _main(["--checkpoint", tiny_npz, "--lr", tmp_path / "lr", "--ref",
                             tmp_path / "ref", "--out", out, "--compare"], capsys)
  assert code == 0, err
  lines = stdout.splitlines()
  assert lines[0].startswith(f"[1/2] a.png: LR 5 x 6, reference 16 x 20 from 1 file -> "
                             f"{out / 'a.png'} 20 x 24, a_compare.png in ")
  assert lines[1].startswith(f"[2/2] b.png: LR 5 x 6, reference 500 x 1000 from 2 files stitched "
                             f"-> {out / 'b.png'} 20 x 24, b_compare.png in ")
  assert {p.name for p in out.iterdir()} == {"a.png", "b.png", "a_compare.png", "b_compare.png"}
  model = TTSR(**TINY, search_chunk_size=predict.DEFAULT_SEARCH_CHUNK_SIZE)
  for lr, refs in ((lr_a, [ref_a]), (lr_b, refs_b)):
    ref_images = [_read_png(r) for r in refs]
    # The CUFED5 protocol's tile, which these small references fit.
    ref = ref_images[0] if len(refs) == 1 else samples.stitch_references(ref_images)
    images = predict.prepare_inputs(_read_png(lr), ref)
    want = predict.super_resolve(model, tiny_params, images).sr
    np.testing.assert_array_equal(_read_png(out / lr.name), want)


def test_several_reference_files_for_one_image(tiny_npz, pair, tmp_path, capsys):
  lr, ref = pair
  code, stdout, err = _main(["--checkpoint", tiny_npz, "--lr", lr, "--ref", ref, ref,
                             "--out", tmp_path / "sr.png"], capsys)
  assert code == 0, err
  assert "reference 500 x 1000 from 2 files stitched" in stdout


# --- bad input: one line each, naming the thing --------------------------------------------------

def _bad_inputs(tmp: pathlib.Path, tiny_npz: pathlib.Path, workdir: pathlib.Path, tiny_params):
  """(argv, expected message fragment) per bad input."""
  lr = _write_png(tmp / "lr.png", _random_image(LR_HW, 1))
  ref = _write_png(tmp / "ref.png", _random_image(REF_HW, 2))
  tiny_ref = _write_png(tmp / "tiny_ref.png", _random_image((11, 30), 2))
  not_image = tmp / "notes.png"
  not_image.write_text("not an image")
  (tmp / "empty").mkdir()
  _write_png(tmp / "lrs" / "a.png", _random_image(LR_HW, 1))
  _write_png(tmp / "lrs" / "c.png", _random_image(LR_HW, 1))
  _write_png(tmp / "refs" / "a.png", _random_image(REF_HW, 1))
  _write_png(tmp / "refs" / "b.png", _random_image(REF_HW, 1))
  _write_png(tmp / "twice" / "a.png", _random_image(REF_HW, 1))
  _write_png(tmp / "twice" / "a.jpg", _random_image(REF_HW, 1))
  wrong_shape = dict(np.load(tiny_npz))
  wrong_shape["MainNet.SFE.conv_tail.weight"] = np.zeros((3, 3, 3, 3), np.float32)
  np.savez(tmp / "wrong_shape.npz", **wrong_shape)
  np.savez(tmp / "vgg19.npz", **{"features.0.weight": np.zeros((64, 3, 3, 3), np.float32)})
  (tmp / "garbage.npz").write_text("not an archive")
  other_config = tmp / "other_config"
  _write_orbax(other_config, tiny_params, {"n_feats": 16})
  infer_args = lambda checkpoint, lr_arg, ref_arg, *rest: [
      "--checkpoint", checkpoint, "--lr", lr_arg, "--ref", ref_arg, "--out", tmp / "o.png", *rest]
  return {
      "missing LR": (infer_args(tiny_npz, tmp / "nope.png", ref), "nope.png: image file not found"),
      "missing reference": (infer_args(tiny_npz, lr, tmp / "nope.png"),
                            "nope.png: image file not found"),
      "missing checkpoint": (infer_args(tmp / "nope.npz", lr, ref),
                             "nope.npz: checkpoint not found"),
      "not an image": (infer_args(tiny_npz, not_image, ref), "notes.png: unreadable or truncated"),
      "LR too large": (infer_args(tiny_npz, lr, ref, "--max_pixels", 400),
                       "lr.png: LR of 5 x 6 gives a 20 x 24 output (480 pixels), above "
                       "--max_pixels 400"),
      "reference too small": (infer_args(tiny_npz, lr, tiny_ref),
                              "tiny_ref.png: image is 30 x 11, expected at least 12 x 12"),
      "empty folder": (infer_args(tiny_npz, tmp / "empty", tmp / "refs"),
                       "empty: directory is empty"),
      "unmatched names": (infer_args(tiny_npz, tmp / "lrs", tmp / "refs"),
                          "unmatched names: no reference in " + str(tmp / "refs") + " for c; "
                          "no LR image in " + str(tmp / "lrs") + " for b"),
      "one name twice": (infer_args(tiny_npz, tmp / "lrs", tmp / "twice"),
                         "twice: several entries named 'a' (a.jpg, a.png); keep one"),
      "folder with a folder and a file": (["--checkpoint", tiny_npz, "--lr", tmp / "lrs", "--ref",
                                           tmp / "refs", ref, "--out", tmp / "o"],
                                          "is a directory, so --ref must be one directory"),
      "n_feats flag": (infer_args(tiny_npz, lr, ref, "--n_feats", 16),
                       "tiny.npz: the checkpoint has n_feats=8, --n_feats asks for 16"),
      "num_res_blocks flag": (infer_args(workdir, lr, ref, "--num_res_blocks", "16+16+8+4"),
                              "the checkpoint has num_res_blocks=1+1+1+1, --num_res_blocks asks "
                              "for 16+16+8+4"),
      "state dict shapes": (infer_args(tmp / "wrong_shape.npz", lr, ref),
                            "wrong_shape.npz: MainNet.SFE.conv_tail.weight: shape (3, 3, 3, 3) "
                            "in the file, the model expects (8, 8, 3, 3)"),
      "not a TTSR state dict": (infer_args(tmp / "vgg19.npz", lr, ref),
                                "vgg19.npz: not a TTSR state dict: no "
                                "'MainNet.SFE.conv_head.weight'"),
      "unreadable state dict": (infer_args(tmp / "garbage.npz", lr, ref),
                                "garbage.npz: not a readable state dict"),
      "orbax params of another config": (infer_args(other_config, lr, ref),
                                         "but the model config stored with it (n_feats 16, "),
      "not a checkpoint": (infer_args(tmp / "empty", lr, ref),
                           "empty: no checkpoint found; expected WORKDIR/checkpoints/<step>/"
                           "{state,config} from training, or a reference state dict file "
                           "(.npz, .pt, .pth)"),
      "unknown checkpoint kind": (infer_args(lr, lr, ref), "lr.png: unknown checkpoint kind"),
      "output not png": (["--checkpoint", tiny_npz, "--lr", lr, "--ref", ref, "--out",
                          tmp / "o.jpg"], "o.jpg: expected a .png file"),
  }


def test_bad_inputs_are_one_line_errors(tmp_path, tiny_npz, workdir, tiny_params, capsys):
  for name, (argv, message) in _bad_inputs(tmp_path, tiny_npz, workdir, tiny_params).items():
    code, _, err = _main(argv, capsys)
    assert code == 1, name
    assert err.count("\n") == 1 and err.startswith("error: "), (name, err)
    assert message in err, (name, err)


def test_pytorch_checkpoint_without_torch_is_a_one_line_error(tmp_path, pair, capsys):
  if importlib.util.find_spec("torch") is not None:
    pytest.skip("torch is installed, so .pt files are readable")
  checkpoint = tmp_path / "TTSR.pt"
  checkpoint.write_bytes(b"")
  lr, ref = pair
  code, _, err = _main(["--checkpoint", checkpoint, "--lr", lr, "--ref", ref,
                        "--out", tmp_path / "o.png"], capsys)
  assert code == 1 and "needs torch" in err and err.count("\n") == 1


@pytest.mark.slow  # the CLI in a subprocess
def test_command_line_error_has_no_traceback(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "ttsr_jax.infer", "--checkpoint", tmp_path / "none.npz", "--lr",
       tmp_path / "none.png", "--ref", tmp_path / "none.png", "--out", tmp_path / "o.png"],
      cwd=REPO, capture_output=True, text=True, check=False)
  assert result.returncode == 1
  assert result.stderr == f"error: {tmp_path / 'none.png'}: image file not found\n"


# --- tiles, a shared reference, --explain, and nothing partial on failure ------------------------

def test_tiles_show_progress_and_a_shared_reference_is_prepared_once(tiny_npz, tiny_params, pair,
                                                                    tmp_path, capsys,
                                                                    monkeypatch):
  lr, ref = pair
  for name in ("a", "b"):
    _write_png(tmp_path / "lr" / f"{name}.png", _read_png(lr))
  calls = []
  features = predict.reference_features
  monkeypatch.setattr(predict, "reference_features",
                      lambda *args: calls.append(1) or features(*args))
  # 4 x 4 LR windows (16 output pixels) with a halo of 1: two tiles per axis of the 6 x 5 LR.
  code, stdout, err = _main(["--checkpoint", tiny_npz, "--lr", tmp_path / "lr", "--ref", ref,
                             "--out", tmp_path / "out", "--tile", 16, "--halo", 1, "--explain"],
                            capsys)
  assert code == 0, err
  assert len(calls) == 1
  assert [line.split(":")[0] for line in stdout.splitlines()] == ["[1/2] a.png", "[2/2] b.png"]
  assert "4/4 tiles" in err and "ETA" in err
  assert {p.name for p in (tmp_path / "out").iterdir()} == {
      f"{n}{s}.png" for n in "ab" for s in ("", "_confidence", "_correspondence")}
  model = TTSR(**TINY, search_chunk_size=predict.DEFAULT_SEARCH_CHUNK_SIZE)
  want = predict.super_resolve(model, tiny_params, predict.prepare_inputs(_read_png(lr),
                                                                          _read_png(ref)),
                               tile=16, halo=1)
  np.testing.assert_array_equal(_read_png(tmp_path / "out" / "b.png"), want.sr)
  # The line names every file written and the range of S that the confidence colours span.
  assert stdout.splitlines()[1].split(" -> ")[1].startswith(
      f"{tmp_path / 'out' / 'b.png'} 20 x 24, b_confidence.png (S {want.s.min():.3f} to "
      f"{want.s.max():.3f}), b_correspondence.png in ")


def test_a_failure_leaves_no_output_file(tiny_npz, pair, tmp_path, capsys, monkeypatch):
  lr, ref = pair

  def fail(*args):
    raise infer.InferError("rendering failed")

  monkeypatch.setattr(infer.explain, "correspondence_image", fail)
  code, _, err = _main(["--checkpoint", tiny_npz, "--lr", lr, "--ref", ref, "--out",
                        tmp_path / "out" / "sr.png", "--explain", "--compare"], capsys)
  assert code == 1 and "rendering failed" in err
  assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_size_limits_are_one_line_errors(tiny_npz, pair, tmp_path, capsys):
  lr, ref = pair
  tiny_lr = _write_png(tmp_path / "tiny_lr.png", _random_image((2, 7), 3))
  cases = {
      "LR too small": (["--lr", tiny_lr, "--ref", ref], "tiny_lr.png: image is 7 x 2, expected at "
                       "least 3 x 3"),
      "tile inside its halo": (["--lr", lr, "--ref", ref, "--tile", 64, "--halo", 8],
                               "--tile 64: a tile of 16 LR pixels has no room inside its halo of "
                               "8 LR pixels on each side; expected --tile of at least 68"),
      "exact halo": (["--lr", lr, "--ref", ref, "--tile", 64, "--exact_halo"],
                     f"halo of {infer.tiling.exact_halo((1, 1, 1, 1))} LR pixels"),
  }
  for name, (argv, message) in cases.items():
    out = tmp_path / f"{name}.png"
    code, _, err = _main(["--checkpoint", tiny_npz, *argv, "--out", out], capsys)
    assert code == 1 and err.count("\n") == 1 and message in err, (name, err)
    assert not out.exists()
