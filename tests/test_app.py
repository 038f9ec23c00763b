"""The browser app's handlers, without a server: outputs against `predict` on the demo pair with
the shipped demo model, the scores of a downscaled photo, the explorer's marks for a known
index, and the one-line message of every bad input."""

import dataclasses
import pathlib
import re

import numpy as np
import pytest
from PIL import Image

from data_pipeline import files
from data_pipeline import samples
from ttsr_jax import app
from ttsr_jax import demo_model
from ttsr_jax import explain
from ttsr_jax import metrics
from ttsr_jax import predict

REPO = pathlib.Path(__file__).resolve().parents[1]
DEMO_LR = REPO / "assets" / "demo" / "lr" / "0.png"
DEMO_REF = REPO / "assets" / "demo" / "ref" / "0.png"


@pytest.fixture(scope="module")
def engine() -> app.Engine:
  return app.load_engine(demo_model.CHECKPOINT)


@pytest.fixture(scope="module")
def demo_result(engine) -> app.Result:
  return app.super_resolve_request(engine, str(DEMO_LR), False, [str(DEMO_REF)])


def _write(path: pathlib.Path, image: np.ndarray) -> str:
  Image.fromarray(image).save(path)
  return str(path)


def test_demo_pair_matches_predict(engine, demo_result):
  lr, ref = files.read_rgb(DEMO_LR), files.read_rgb(DEMO_REF)
  images = predict.prepare_inputs(lr, ref)
  expected = predict.super_resolve(engine.model, engine.params, images)
  height, width = lr.shape[:2]
  assert demo_result.prediction.sr.shape == (4 * height, 4 * width, 3)
  np.testing.assert_array_equal(demo_result.prediction.sr, expected.sr)
  np.testing.assert_array_equal(demo_result.prediction.s, expected.s)
  np.testing.assert_array_equal(demo_result.prediction.index, expected.index)
  np.testing.assert_array_equal(demo_result.bicubic, images["lrsr"])
  np.testing.assert_array_equal(demo_result.ref, images["ref"])
  assert demo_result.scores == {} and demo_result.picked == [] and demo_result.original is None


def test_page_outputs(engine, demo_result, tmp_path):
  compiled = predict.tile_function(engine.model)._cache_size()
  outputs = dict(zip(app.RUN_OUTPUTS, app.handle_run(engine, tmp_path, str(DEMO_LR), False,
                                                     [str(DEMO_REF)], None, 1)))
  result = outputs["last"]
  sr = result.prediction.sr
  bicubic, slider_sr = outputs["slider"]
  np.testing.assert_array_equal(bicubic, result.bicubic)
  np.testing.assert_array_equal(slider_sr, sr)
  np.testing.assert_array_equal(outputs["output"], sr)
  np.testing.assert_array_equal(outputs["confidence"],
                                explain.confidence_image(result.prediction.s))
  np.testing.assert_array_equal(np.asarray(Image.open(outputs["download"])), sr)
  assert pathlib.Path(outputs["download"]).name == "0_x4.png"
  assert pathlib.Path(outputs["download"]).parent.parent == tmp_path
  height, width = result.lr.shape[:2]
  assert f"LR {width} x {height} -> output {4 * width} x {4 * height}" in outputs["status"]
  # A second request of the demo pair's sizes reused the programs the first one compiled.
  np.testing.assert_array_equal(sr, demo_result.prediction.sr)
  assert predict.tile_function(engine.model)._cache_size() == compiled


def test_server_listens_on_this_machine_only_by_default():
  assert app._parser().parse_args([]).host == "127.0.0.1"


def test_downscaled_photo_is_scored(engine, demo_result, tmp_path):
  # The demo pair's bicubic upsampling as the photo: its LR has the demo LR's shape, so the
  # programs compiled for the demo pair are reused.
  photo = demo_result.bicubic
  result = app.super_resolve_request(engine, _write(tmp_path / "photo.png", photo), True,
                                     [str(DEMO_REF)])
  np.testing.assert_array_equal(result.original, photo)
  np.testing.assert_array_equal(result.lr, samples.down_up(photo)[0])
  assert set(result.scores) == {"TTSR", "bicubic"}
  assert result.scores["TTSR"] == (metrics.calc_psnr(result.prediction.sr, photo),
                                   metrics.calc_ssim(result.prediction.sr, photo))
  assert result.scores["bicubic"] == (metrics.calc_psnr(result.bicubic, photo),
                                      metrics.calc_ssim(result.bicubic, photo))
  assert "| TTSR |" in app.summary(result) and "| bicubic |" in app.summary(result)


def _known_result(index_value: int, grid_hw=(5, 6)) -> app.Result:
  """A 3x4 LR image whose every position took its texture from lv3 position `index_value` of a
  reference of grid `grid_hw` (4x4 pixels each)."""
  rng = np.random.default_rng(0)
  lr = rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
  ref = rng.integers(0, 256, (4 * grid_hw[0], 4 * grid_hw[1], 3), dtype=np.uint8)
  s = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
  prediction = predict.Prediction(np.zeros((12, 16, 3), np.uint8), s,
                                  np.full((3, 4), index_value, np.int32), grid_hw)
  return app.Result(lr, np.zeros((12, 16, 3), np.uint8), ref, prediction, 0.0, None, {}, [])


def _coloured(image: np.ndarray, colour) -> np.ndarray:
  return np.all(image == colour, axis=-1)


def test_explorer_highlights_the_used_patch():
  # Index 8 of a 5x6 grid is lv3 row 1, column 2: its 3x3 patch covers rows 0-2, columns 1-3,
  # i.e. reference pixels y 0-11, x 4-15.
  result = _known_result(8)
  sr_marked, lr_marked, ref_marked, text = app.explore(result, x=9, y=6)  # LR pixel (2, 1)
  assert app.reference_box(result, 1, 2) == (0, 4, 12, 16)
  np.testing.assert_array_equal(ref_marked[0:12, 4:16], result.ref[0:12, 4:16])
  # The 2-pixel outline just outside the patch, clipped at the top.
  red = _coloured(ref_marked, app.MARK_COLOUR)
  assert red[12:14, 2:18].all() and red[0:12, 2:4].all() and red[0:12, 16:18].all()
  assert red.sum() == 2 * 16 + 2 * 2 * 12
  # Elsewhere the reference is dimmed, except under the ring around the patch.
  ring = _coloured(ref_marked, app.RING_COLOUR)
  assert ring.any()
  elsewhere = ~red & ~ring
  elsewhere[0:12, 4:16] = False
  np.testing.assert_array_equal(ref_marked[elsewhere],
                                np.round(result.ref[elsewhere] * app.DIM).astype(np.uint8))
  # The LR pixel (2, 1) is the 4x4 block at rows 4-7, columns 8-11 of the output and of the x4
  # LR view, outlined.
  np.testing.assert_array_equal(lr_marked[4:8, 8:12], np.broadcast_to(result.lr[1, 2], (4, 4, 3)))
  for marked in (sr_marked, lr_marked):
    red = _coloured(marked, app.MARK_COLOUR)
    assert red[2:4, 6:14].all() and red[8:10, 6:14].all() and not red[4:8, 8:12].any()
    assert red.sum() == 2 * (2 * 8 + 2 * 4)
  assert "LR pixel (2, 1)" in text and "x 4-15, y 0-11" in text
  assert f"S = {result.prediction.s[1, 2]:.3f}" in text


def test_explorer_clips_the_patch_at_the_reference_corner():
  result = _known_result(29)  # the last position of the 5x6 grid: row 4, column 5
  _, _, ref_marked, text = app.explore(result, x=0, y=0)
  assert app.reference_box(result, 0, 0) == (12, 16, 20, 24)
  np.testing.assert_array_equal(ref_marked[12:, 16:], result.ref[12:, 16:])
  assert "x 16-23, y 12-19" in text


@pytest.mark.parametrize("kind, expected", [
    ("corrupt", "image: corrupt.png: unreadable or truncated image"),
    ("empty", "image: empty.png: unreadable or truncated image"),
    ("text", "image: notes.txt: unreadable or truncated image"),
    ("small_ref", "reference: small.png: image is 8 x 8, expected at least 12 x 12"),
    ("too_large", "image: LR of 88 x 125 gives a 352 x 500 output (176,000 pixels), above "
                  "--max_pixels 100,000"),
    ("no_image", "no image: upload a low-resolution image"),
    ("no_reference", "no reference: upload one or several reference photos"),
])
def test_bad_input_gives_one_line(engine, tmp_path, kind, expected):
  image, refs, limited = str(DEMO_LR), [str(DEMO_REF)], engine
  if kind == "corrupt":
    image = tmp_path / "corrupt.png"
    image.write_bytes(DEMO_LR.read_bytes()[:200])
  elif kind == "empty":
    image = tmp_path / "empty.png"
    image.write_bytes(b"")
  elif kind == "text":
    image = tmp_path / "notes.txt"
    image.write_text("not an image\n")
  elif kind == "small_ref":
    refs = [_write(tmp_path / "small.png", np.zeros((8, 8, 3), np.uint8))]
  elif kind == "too_large":
    limited = dataclasses.replace(engine, max_pixels=100_000)
  elif kind == "no_image":
    image = None
  elif kind == "no_reference":
    refs = []
  with pytest.raises(app.AppError, match="^" + re.escape(expected)):
    app.super_resolve_request(limited, image and str(image), False, refs)
  outputs = dict(zip(app.RUN_OUTPUTS, app.handle_run(limited, tmp_path, image and str(image), False,
                                                     refs, None, 1)))
  assert outputs["status"].startswith("**Error:** " + expected)
  assert "\n" not in outputs["status"] and str(tmp_path) not in outputs["status"]
  assert all(outputs[k] is None for k in ("last", "slider", "output", "download"))


def test_unexpected_failure_is_one_line(engine, tmp_path, capsys):
  broken = dataclasses.replace(engine, params={})
  status = dict(zip(app.RUN_OUTPUTS, app.handle_run(broken, tmp_path, str(DEMO_LR), False,
                                                    [str(DEMO_REF)], None, 1)))["status"]
  assert status.startswith("**Error:** the request failed (") and "\n" not in status
  assert "Traceback" in capsys.readouterr().err  # the server's log has the details


def test_missing_checkpoint_is_one_line(tmp_path, capsys):
  assert app.main(["--checkpoint", str(tmp_path / "missing.npz")]) == 1
  err = capsys.readouterr().err
  assert err.startswith("error: ") and err.count("\n") == 1 and "missing.npz" in err
