"""Tiled prediction (`ttsr_jax.predict`, `ttsr_jax.tiling`): the derived halo makes tiles exact,
the tile plan's invariants, and the explain images (`ttsr_jax.explain`) decode back to the
model's S and index; captioned panels."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data_pipeline import samples
from ttsr_jax import explain
from ttsr_jax import predict
from ttsr_jax import tiling
from ttsr_jax.models.ttsr import TTSR
from parity import gamma
from tiny_configs import TINY, random_params

# Two tiles per axis at the tiny model's exact halo (22 LR pixels): 64x60 LR in windows of at
# most 56 (224 output pixels).
LR_HW, REF_HW, TILE = (64, 60), (40, 36), 224


@pytest.fixture(scope="module")
def model_and_params():
  return TTSR(**TINY), random_params()


@pytest.fixture(scope="module")
def images():
  rng = np.random.default_rng(1)
  # Smooth-ish content (a random image upsampled) so the search has structure to find.
  lr = rng.integers(0, 256, (LR_HW[0] // 4, LR_HW[1] // 4, 3), dtype=np.uint8)
  lr = np.asarray(lr.repeat(4, axis=0).repeat(4, axis=1), np.int64)
  lr = np.clip(lr + rng.integers(-20, 21, lr.shape), 0, 255).astype(np.uint8)
  ref = rng.integers(0, 256, (*REF_HW, 3), dtype=np.uint8)
  return predict.prepare_inputs(lr, ref)


@pytest.fixture(scope="module")
def whole(model_and_params, images):
  model, params = model_and_params
  reference = predict.reference_features(model, params, images["ref"])
  return reference, predict.super_resolve(model, params, images, reference=reference, tile=0)


def test_exact_halo_makes_tiles_identical_to_the_whole_image(model_and_params, images, whole):
  model, params = model_and_params
  reference, want = whole
  halo = tiling.exact_halo(TINY["num_res_blocks"])
  assert len(predict.tile_plan(LR_HW, TILE, halo)) == 4
  calls = []
  got = predict.super_resolve(model, params, images, reference=reference, tile=TILE, halo=halo,
                              progress=lambda done, total: calls.append((done, total)))
  assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
  np.testing.assert_array_equal(got.index, want.index)
  np.testing.assert_array_equal(got.s, want.s)
  np.testing.assert_array_equal(got.sr, want.sr)
  # Without a halo the tiles' borders differ: the comparison above can fail.
  no_halo = predict.super_resolve(model, params, images, reference=reference, tile=TILE, halo=0)
  assert not np.array_equal(no_halo.sr, want.sr)
  assert want.grid_hw == (REF_HW[0] // 4, REF_HW[1] // 4)


def test_receptive_radius_grows_with_the_blocks():
  base = tiling.receptive_radius((1, 1, 1, 1))
  # A stage-1 ResBlock is two more 3x3 convs at 1x on every path: +2 LR pixels.
  assert tiling.receptive_radius((1, 2, 1, 1)) == base + 2
  assert tiling.receptive_radius((2, 1, 1, 2)) > base
  assert tiling.exact_halo((16, 16, 8, 4)) > tiling.exact_halo((1, 1, 1, 1))


@pytest.mark.parametrize("size,max_window,halo", [(100, 40, 5), (97, 30, 7), (64, 56, 22),
                                                  (10, 20, 3), (50, 11, 5), (320, 192, 16)])
def test_tile_plan_covers_the_image_with_a_halo_inside_every_window(size, max_window, halo):
  tiles = tiling.axis_tiles(size, max_window, halo)
  assert tiles[0].core_start == 0 and tiles[-1].core_stop == size
  assert all(a.core_stop == b.core_start for a, b in zip(tiles, tiles[1:]))
  if len(tiles) > 1:
    assert {t.length for t in tiles} == {tiles[0].length} and tiles[0].length <= max_window
  for t in tiles:
    assert 0 <= t.start and t.start + t.length <= size
    assert t.core_start - t.start >= halo or t.start == 0
    assert t.start + t.length - t.core_stop >= halo or t.start + t.length == size


def test_tile_without_room_inside_its_halo_is_refused():
  with pytest.raises(ValueError, match="no room inside a halo of 8"):
    tiling.axis_tiles(100, 16, 8)


def test_confidence_image_decodes_to_the_models_s(whole):
  _, prediction = whole
  image = explain.confidence_image(prediction.s)
  height, width = (predict.SCALE * n for n in prediction.s.shape)
  heat = image[predict.CAPTION_HEIGHT:, :width].astype(np.int64)
  assert image.shape[0] == predict.CAPTION_HEIGHT + height
  # The colours span S's own range: each pixel is the colour of its S's step on that range
  # (compared as colours: some neighbouring viridis steps round to the same uint8 colour).
  low, high = explain.confidence_range(prediction.s)
  assert (low, high) == (prediction.s.min(), prediction.s.max()) and 0.0 < low < high <= 1.0
  s_at_output = prediction.s.repeat(predict.SCALE, axis=0).repeat(predict.SCALE, axis=1)
  steps = np.round(255 * (s_at_output.astype(np.float64) - low) / (high - low)).astype(int)
  np.testing.assert_array_equal(heat, explain.S_COLOURS[steps])
  assert (steps.min(), steps.max()) == (0, 255)


def test_correspondence_colours_decode_to_the_index(whole, images):
  _, prediction = whole
  wheel = explain.wheel_colours(prediction.grid_hw).reshape(-1, 3).astype(np.int64)
  assert len(np.unique(wheel, axis=0)) == len(wheel)  # one colour per reference position
  image = explain.correspondence_image(prediction.index, prediction.grid_hw, images["ref"])
  height, width = (predict.SCALE * n for n in prediction.s.shape)
  sources = image[predict.CAPTION_HEIGHT:, :width].astype(np.int64)
  decoded = ((sources[:, :, None, :] - wheel[None, None]) ** 2).sum(-1).argmin(-1)
  index_at_output = prediction.index.repeat(predict.SCALE, axis=0).repeat(predict.SCALE, axis=1)
  np.testing.assert_array_equal(decoded, index_at_output)
  assert len(np.unique(prediction.index)) > 1
  # The last panel is the key: the wheel at the reference's size, apart from its labels.
  key_hw = tuple(predict.SCALE * n for n in prediction.grid_hw)
  key = image[predict.CAPTION_HEIGHT:, -key_hw[1]:]
  wheel_pixels = explain.wheel_colours(prediction.grid_hw).repeat(predict.SCALE, axis=0).repeat(
      predict.SCALE, axis=1)
  if key.shape[0] == key_hw[0]:  # the reference is as tall as the output: no resize
    assert (key == wheel_pixels).all(-1).mean() > 0.8


def test_panels_put_captions_above_images_of_one_height():
  a = np.zeros((20, 10, 3), np.uint8)
  b = np.full((40, 30, 3), 128, np.uint8)
  row = predict.panels([("bicubic", a), ("reference", b)])
  assert row.shape == (predict.CAPTION_HEIGHT + 20, 10 + predict.PANEL_GAP + 15, 3)
  np.testing.assert_array_equal(row[predict.CAPTION_HEIGHT:, :10], a)
  assert (row[:predict.CAPTION_HEIGHT, 10 + predict.PANEL_GAP:] < 128).any()  # caption text
  assert (row[:, 10:10 + predict.PANEL_GAP] == 255).all()


@pytest.mark.parametrize("mode", ["factored", "coarse"])
def test_exact_halo_makes_tiles_identical_to_the_whole_image_in_each_search_mode(images, mode):
  model, params = TTSR(**TINY, search_mode=mode), random_params()
  reference = predict.reference_features(model, params, images["ref"])
  assert reference.keys.shape == (1, REF_HW[0] // 4, REF_HW[1] // 4, 256)  # no unfolded keys
  want = predict.super_resolve(model, params, images, reference=reference, tile=0)
  halo = tiling.exact_halo(TINY["num_res_blocks"])
  tiles = predict.tile_plan(LR_HW, TILE, halo)
  # Windows at even LR rows and columns: `coarse` pools the same 2x2 cells as the whole image.
  assert len(tiles) == 4 and all(r.start % 2 == c.start % 2 == 0 for r, c in tiles)
  got = predict.super_resolve(model, params, images, reference=reference, tile=TILE, halo=halo)
  np.testing.assert_array_equal(got.index, want.index)
  np.testing.assert_array_equal(got.s, want.s)
  np.testing.assert_array_equal(got.sr, want.sr)
  assert want.grid_hw == (REF_HW[0] // 4, REF_HW[1] // 4)


def test_reference_features_in_bands_equal_the_whole_image_ones(model_and_params):
  """Without unfolded keys the reference's LTE runs in bands of rows with a halo of context; a
  reference of several bands gives the whole-image features (the last band overlaps)."""
  model, params = model_and_params
  factored = model.clone(search_mode="factored")
  rng = np.random.default_rng(2)
  height = predict.SCALE * (2 * predict.REFERENCE_BAND_ROWS + 2 * predict.REFERENCE_BAND_HALO + 3)
  ref = rng.integers(0, 256, (height, 24, 3), dtype=np.uint8)
  banded = predict.reference_features(factored, params, ref)
  prepared = predict.prepare_reference(ref)
  whole = jax.jit(lambda p, r, rs: factored.apply({"params": p}, r, rs,
                                                  method=TTSR.reference_features))(
      params, *(samples.normalize(prepared[k])[None] for k in ("ref", "refsr")))
  assert banded.lv1.shape == (1, height, 24, 3)  # the image lv1 is computed from
  for got, want in zip(banded, whole):
    assert got.shape == want.shape
    # The same convolutions on other shapes: float32 rounding of their sums (measured: 0 on lv1-3).
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=1e-5)


@pytest.mark.parametrize("mode", ["factored", "coarse"])
def test_modes_without_keys_transfer_what_exact_transfers(model_and_params, images, whole, mode):
  """Given the same index, the modes that compute lv1 where the transfer reads it (and S from the
  chosen patches) give exact's textures and S within float32 rounding, and its output within one
  grey level."""
  model, params = model_and_params
  _, want = whole
  inputs = [samples.normalize(images[k])[None] for k in samples.MODEL_INPUT_KEYS]
  index = jnp.asarray(want.index.reshape(1, -1))
  forward = lambda m: jax.jit(lambda p, *x: m.apply({"params": p}, *x, index=index))(params,
                                                                                     *inputs)
  exact, other = forward(model), forward(model.clone(search_mode=mode))
  np.testing.assert_array_equal(other.index, exact.index)
  np.testing.assert_array_equal(other.T_lv2, exact.T_lv2)
  np.testing.assert_array_equal(other.T_lv3, exact.T_lv3)
  # lv1 and S: float32 sums of at most 9 * 256 terms in two orders, relative to the largest
  # value (features are post-ReLU, S a cosine in [0, 1]).
  for name in ("T_lv1", "S"):
    got, ref = np.asarray(getattr(other, name)), np.asarray(getattr(exact, name))
    np.testing.assert_allclose(got, ref, rtol=0, atol=2 * gamma(9 * 256) * np.abs(ref).max())
  diff = np.abs(predict.to_uint8(other.sr[0]).astype(int) - predict.to_uint8(exact.sr[0]))
  assert diff.max() <= 1
