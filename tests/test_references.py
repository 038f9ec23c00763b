"""Picking references from a pool (`ttsr_jax.references`, `infer --ref_pool --pick`, the app) on
pools where the right reference is known: the authors' demo pair among other photos, and the
other half of a photo whose one half is the LR image."""

import pathlib

import numpy as np
import pytest
import skimage.data
from PIL import Image

from data_pipeline import samples
from ttsr_jax import app
from ttsr_jax import generators
from ttsr_jax import demo_model
from ttsr_jax import infer
from ttsr_jax import references

REPO = pathlib.Path(__file__).resolve().parents[1]
DEMO_LR = REPO / "assets" / "demo" / "lr" / "0.png"
DEMO_REF = REPO / "assets" / "demo" / "ref" / "0.png"
# Photos that ship with scikit-image, as the wrong candidates.
OTHERS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")


def _read(path: pathlib.Path) -> np.ndarray:
  return np.asarray(Image.open(path).convert("RGB"))


def _photo(name: str) -> np.ndarray:
  return getattr(skimage.data, name)()


@pytest.fixture(scope="module")
def params() -> dict:
  return generators.load(demo_model.CHECKPOINT)[0]


def test_demo_reference_ranks_first(params):
  pool = [_photo(name) for name in OTHERS[:2]] + [_read(DEMO_REF)] + [
      _photo(name) for name in OTHERS[2:]]
  descriptors = references.describe([lambda p=p: p for p in pool], params)
  ranking = references.rank(_read(DEMO_LR), descriptors, params)
  assert ranking.order[0] == 2
  assert sorted(ranking.order) == list(range(len(pool)))
  assert np.all(np.diff(ranking.scores) <= 0)
  picked = references.pick(_read(DEMO_LR), descriptors, params, 2)
  assert [i for i, _ in picked] == list(ranking.order[:2])
  np.testing.assert_array_equal([score for _, score in picked], ranking.scores[:2])


@pytest.mark.parametrize("name", ["chelsea", "coffee", "astronaut"])
def test_other_half_of_the_photo_ranks_first(params, name):
  photo = _photo(name)
  half = photo.shape[1] // 2
  lr = samples.down_up(samples.crop_to_multiple(photo[:, :half]))[0]
  pool = [photo[:, half:]] + [_photo(other) for other in OTHERS if other != name]
  ranking = references.rank(lr, references.describe([lambda p=p: p for p in pool], params),
                            params)
  assert ranking.order[0] == 0, ranking


def test_stitch_keeps_one_and_tiles_several():
  small = np.full((20, 30, 3), 7, np.uint8)
  assert references.stitch([small]) is small
  tall = np.full((600, 8, 3), 9, np.uint8)  # longer than the 500-pixel tile: the tile grows
  stitched = references.stitch([small, tall])
  assert stitched.shape == (2 * 600, 600, 3)
  np.testing.assert_array_equal(stitched[:20, :30], small)
  np.testing.assert_array_equal(stitched[600:, :8], tall)
  assert not stitched[20:600].any() and not stitched[:, 30:].any()


def test_infer_picks_from_a_pool(tmp_path, capsys):
  pool = tmp_path / "pool"
  pool.mkdir()
  for name in OTHERS[:2]:
    Image.fromarray(_photo(name)).save(pool / f"{name}.png")
  (pool / "pirate.png").write_bytes(DEMO_REF.read_bytes())
  picked, given = tmp_path / "picked.png", tmp_path / "given.png"
  assert infer.main(["--lr", str(DEMO_LR), "--ref_pool", str(pool), "--pick", "1",
                     "--out", str(picked)]) == 0
  out = capsys.readouterr().out
  assert out.startswith("0.png: references pirate.png (") and "of 3 in" in out
  assert infer.main(["--lr", str(DEMO_LR), "--ref", str(pool / "pirate.png"),
                     "--out", str(given)]) == 0
  np.testing.assert_array_equal(_read(picked), _read(given))


def test_app_picks_from_an_uploaded_pool_and_the_server_pool(tmp_path):
  pool = tmp_path / "pool"
  pool.mkdir()
  paths = []
  for name in OTHERS[:3]:
    paths.append(pool / f"{name}.png")
    Image.fromarray(_photo(name)).save(paths[-1])
  paths.append(pool / "pirate.png")
  paths[-1].write_bytes(DEMO_REF.read_bytes())
  engine = app.load_engine(demo_model.CHECKPOINT, ref_pool=pool)
  expected = app.super_resolve_request(engine, str(DEMO_LR), False, [str(paths[-1])])
  uploaded = app.super_resolve_request(engine, str(DEMO_LR), False, [],
                                       [str(p) for p in paths], 1)
  from_server = app.super_resolve_request(engine, str(DEMO_LR), False, [], [], 1)
  for result in (uploaded, from_server):
    assert [name for name, _ in result.picked] == ["pirate.png"]
    np.testing.assert_array_equal(result.prediction.sr, expected.prediction.sr)
  assert "pirate.png (" in app.summary(uploaded)
  two = app.super_resolve_request(engine, str(DEMO_LR), False, [], [], 2)
  assert len(two.picked) == 2 and two.picked[0][0] == "pirate.png"
  assert two.ref.shape[0] == 2 * two.ref.shape[1]  # stitched: two square tiles
