"""Chunked search equals the whole-matrix search; keys made in blocks of rows equal the keys made
at once; transfer equals unfold -> gather -> fold; the `factored` search takes the `exact` one's
argmax wherever its margin is above float noise, and `coarse` finds a known match."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from parity import gamma, load_case, nhwc
from ttsr_jax import convert
from ttsr_jax.models.lte import LTE
from ttsr_jax.models.search_transfer import (FACTORED_TILE_SIDE, Conv3x3Relu, _factored_top,
                                             _grid_argmax, check_search_mode, reference_keys,
                                             search, search_features, tile_side, transfer,
                                             unfold3x3)
from ttsr_jax.models.ttsr import to_unit_range

search_jit = jax.jit(search, static_argnums=2)


def _random_features(key, lr_hw, ref_hw, channels=32):
  k1, k2 = jax.random.split(key)
  # Post-ReLU-like features with many exact zeros, as LTE features have.
  lr = jax.nn.relu(jax.random.normal(k1, (2, *lr_hw, channels)))
  ref = jax.nn.relu(jax.random.normal(k2, (2, *ref_hw, channels)))
  return lr, ref


def test_keys_made_in_blocks_of_rows_equal_the_keys_made_at_once():
  _, ref = _random_features(jax.random.key(3), (4, 4), (13, 6))
  keys = jax.jit(reference_keys, static_argnums=1)
  whole = keys(ref, 0)
  assert whole.shape == (2, 13, 6, 9 * 32)
  # 1 row at a time, blocks that do not divide the 13 rows (the last one overlaps), one block.
  for rows in (1, 5, 13):
    np.testing.assert_array_equal(np.asarray(keys(ref, rows)), np.asarray(whole))


@pytest.mark.parametrize("chunk_size", [1, 7, 64])
def test_chunked_search_equals_full_on_random_features(chunk_size):
  lr, ref = _random_features(jax.random.key(0), (9, 11), (10, 6))
  s_full, idx_full = search_jit(lr, ref, 0)
  s_chunk, idx_chunk = search_jit(lr, ref, chunk_size)
  np.testing.assert_array_equal(np.asarray(idx_chunk), np.asarray(idx_full))
  np.testing.assert_array_equal(np.asarray(s_chunk), np.asarray(s_full))


def test_chunked_search_equals_full_on_real_images():
  weights = load_case("a_weights.npz")
  case_a, case_b = load_case("a_forward.npz"), load_case("b_forward_testpath.npz")
  lte_params = convert.import_state_dict(
      {k: v for k, v in weights.items() if k.startswith("LTE.")},
      {"LTE": convert.abstract_params(LTE(), jnp.zeros((1, 16, 16, 3)))})["LTE"]
  lte = jax.jit(lambda p, x: LTE().apply({"params": p}, to_unit_range(x))[2])
  lv3 = lambda x: lte(lte_params, x)
  # Batch 2: the case-b LR image twice, against case b's reference and a 160x160 training reference.
  lrsr = np.concatenate([nhwc(case_b["lrsr"])] * 2)
  refsr = np.concatenate([nhwc(case_b["refsr"])[:, :148, :108]] * 2)
  refsr[1] = nhwc(case_a["refsr"])[0, :148, :108]
  s_full, idx_full = search_jit(lv3(lrsr), lv3(refsr), 0)
  s_chunk, idx_chunk = search_jit(lv3(lrsr), lv3(refsr), 100)
  np.testing.assert_array_equal(np.asarray(idx_chunk), np.asarray(idx_full))
  np.testing.assert_array_equal(np.asarray(s_chunk), np.asarray(s_full))
  np.testing.assert_array_equal(np.asarray(idx_full)[0][~case_b["R_fragile"][0]],
                                case_b["R_arg"][0][~case_b["R_fragile"][0]])


def _fold_reference(index, ref_feat, lr_hw, scale):
  """The reference's unfold(3s, stride s, pad s) -> gather -> fold / 9, in NumPy."""
  n, rh, rw, c = ref_feat.shape
  k, pad = 3 * scale, scale
  padded = np.pad(ref_feat, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  grid_w = (rw + 2 * pad - k) // scale + 1
  lh, lw = lr_hw
  out = np.zeros((n, lh * scale + 2 * pad, lw * scale + 2 * pad, c))
  for b in range(n):
    for i in range(lh * lw):
      jr, jc = divmod(int(index[b, i]), grid_w)
      ir, ic = divmod(i, lw)
      patch = padded[b, jr * scale:jr * scale + k, jc * scale:jc * scale + k]
      out[b, ir * scale:ir * scale + k, ic * scale:ic * scale + k] += patch
  return out[:, pad:pad + lh * scale, pad:pad + lw * scale] / 9


@pytest.mark.parametrize("ref_hw", [(24, 20), (26, 18)])  # lv1 sides multiple of 4, and not
def test_transfer_equals_unfold_gather_fold(ref_hw):
  rng = np.random.RandomState(0)
  lr_hw = (5, 7)
  h, w = ref_hw[0] // 4, ref_hw[1] // 4
  feats = [rng.standard_normal((2, ref_hw[0] // d, ref_hw[1] // d, 3)).astype(np.float32)
           for d in (1, 2, 4)]
  index = rng.randint(0, h * w, size=(2, lr_hw[0] * lr_hw[1]))
  got = transfer(jnp.asarray(index), w, lr_hw, *[jnp.asarray(f) for f in feats])
  for t, feat, scale in zip(got, feats[::-1], (1, 2, 4)):
    # Each output averages at most 9 overlapping patches (the float64 fold adds ~1e-16): a
    # float32 sum of 9 terms and a rounded 1/9: gamma_10 of the largest input.
    np.testing.assert_allclose(np.asarray(t), _fold_reference(index, feat, lr_hw, scale), rtol=0,
                               atol=gamma(10) * np.abs(feat).max())


def _conv3x3(image, kernel):
  """float64 zero-padded 3x3 convolution, NHWC x HWIO."""
  h, w = image.shape[1:3]
  padded = np.pad(image.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
  return sum(np.einsum("nhwc,co->nhwo", padded[:, i:i + h, j:j + w],
                       kernel[i, j].astype(np.float64)) for i in range(3) for j in range(3))


@pytest.mark.parametrize("ref_hw", [(24, 20), (26, 18)])
def test_transfer_computes_lv1_where_it_reads_it(ref_hw):
  """lv1 given as relu(conv3x3(image) + bias) gives the texture of the whole lv1 map."""
  rng = np.random.RandomState(1)
  lr_hw = (5, 7)
  h, w = ref_hw[0] // 4, ref_hw[1] // 4
  image = rng.standard_normal((2, *ref_hw, 3)).astype(np.float32)
  kernel = rng.standard_normal((3, 3, 3, 8)).astype(np.float32) / 5
  bias = rng.standard_normal(8).astype(np.float32) / 5
  lv2 = rng.standard_normal((2, ref_hw[0] // 2, ref_hw[1] // 2, 4)).astype(np.float32)
  lv3 = rng.standard_normal((2, h, w, 4)).astype(np.float32)
  index = rng.randint(0, h * w, size=(2, lr_hw[0] * lr_hw[1]))
  lv1 = Conv3x3Relu(*(jnp.asarray(a) for a in (image, kernel, bias)))
  got = transfer(jnp.asarray(index), w, lr_hw, lv1, jnp.asarray(lv2), jnp.asarray(lv3))[2]
  lv1_map = np.maximum(_conv3x3(image, kernel) + bias, 0)
  # Each lv1 value is a float32 sum of 28 terms (27 products and the bias), off by at most
  # gamma_28 of their magnitudes; the fold adds gamma_10 of the largest value (as above).
  magnitudes = _conv3x3(np.abs(image), np.abs(kernel)) + np.abs(bias)
  atol = gamma(28) * magnitudes.max() + gamma(10) * lv1_map.max()
  np.testing.assert_allclose(np.asarray(got), _fold_reference(index, lv1_map, lr_hw, 4), rtol=0,
                             atol=atol)


def test_unfold_zero_pads_borders():
  x = jnp.arange(1, 7, dtype=jnp.float32).reshape(1, 2, 3, 1)
  patches = np.asarray(unfold3x3(x))
  np.testing.assert_array_equal(patches[0, 0], [0, 0, 0, 0, 1, 2, 0, 4, 5])
  np.testing.assert_array_equal(patches[0, 5], [2, 3, 0, 5, 6, 0, 0, 0, 0])


def test_search_gradient_reaches_only_the_selected_patch():
  lr, ref = _random_features(jax.random.key(3), (4, 4), (4, 4), channels=4)
  _, index = search(lr, ref)
  grad_ref = jax.grad(lambda r: search(lr, r)[0].sum())(ref)
  touched = np.zeros((2, 4, 4), bool)
  for b in range(2):
    for j in np.unique(np.asarray(index[b])):
      r, c = divmod(int(j), 4)
      touched[b, max(r - 1, 0):r + 2, max(c - 1, 0):c + 2] = True
  assert np.all(np.asarray(grad_ref)[~touched] == 0)
  assert np.any(np.asarray(grad_ref)[touched] != 0)


# --- search modes ---------------------------------------------------------------------------------

search_features_jit = jax.jit(search_features, static_argnums=(2, 3))


def _cosine_bound(channels: int) -> float:
  """The float32 rounding bound of a relevance score, the cosine of two 3x3 patches of
  `channels` channels: a dot product of length 9C (gamma_9C) of vectors normalised to within a
  few u (8 u)."""
  return gamma(9 * channels + 8)


def _scores64(lr, ref):
  """Normalised 3x3-patch inner products of every pair, in float64: (N, H*W, h*w)."""
  unfold = lambda x: np.asarray(unfold3x3(x), np.float64)
  q, k = unfold(lr), unfold(ref)
  q /= np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
  k /= np.maximum(np.linalg.norm(k, axis=-1, keepdims=True), 1e-12)
  return np.einsum("nqd,nkd->nqk", q, k)


@pytest.mark.parametrize("chunk_size", [0, 11, 40])  # whole; tiles of 3 x 3 and 5 x 5 positions
def test_factored_search_matches_exact(chunk_size):
  lr, ref = _random_features(jax.random.key(5), (9, 11), (13, 7))
  s_exact, idx_exact = search_jit(lr, ref, 0)
  s_fact, idx_fact = search_features_jit(lr, ref, "factored", chunk_size)
  scores = _scores64(lr, ref)
  top2 = np.sort(scores, axis=-1)[..., -2:]
  # Each float32 score is within `bound` of the exact one in any summation order: where the best
  # score leads the second by more than twice that, both searches must take it.
  bound = _cosine_bound(lr.shape[-1])
  clear = top2[..., 1] - top2[..., 0] > 2 * bound
  assert clear.mean() > 0.9
  want = scores.argmax(-1)
  np.testing.assert_array_equal(np.asarray(idx_exact)[clear], want[clear])
  np.testing.assert_array_equal(np.asarray(idx_fact)[clear], want[clear])
  # S from the chosen pair: the same dot product of the same normalised vectors.
  s_same, _ = search_features_jit(lr, ref, "factored", chunk_size, idx_exact)
  np.testing.assert_allclose(np.asarray(s_same), np.asarray(s_exact), rtol=0, atol=bound)


@pytest.mark.parametrize("side", [0, 3, 5])  # whole; overlapping tiles of the 13 x 7 keys
def test_factored_top_candidates_are_the_best_distinct_keys(side):
  """`coarse` keeps several candidates per query: the best distinct keys, however the key tiles
  overlap at the grid's edges (a key scored by two tiles must not take two places)."""
  count = 4
  lr, ref = _random_features(jax.random.key(6), (9, 11), (13, 7))
  top = np.asarray(jax.jit(_factored_top, static_argnums=(2, 3))(lr, ref, count, side))
  scores = _scores64(lr, ref)
  assert all(len(set(row)) == count for row in top.reshape(-1, count))
  # Where the count-th best score leads the next by more than float32 noise, the same set.
  ranked = np.sort(scores, axis=-1)
  clear = ranked[..., -count] - ranked[..., -count - 1] > 2 * _cosine_bound(lr.shape[-1])
  want = np.argsort(-scores, axis=-1, kind="stable")[..., :count]
  np.testing.assert_array_equal(np.sort(top, axis=-1)[clear], np.sort(want, axis=-1)[clear])


def test_factored_search_matches_exact_on_real_images():
  weights = load_case("a_weights.npz")
  case_b = load_case("b_forward_testpath.npz")
  lte_params = convert.import_state_dict(
      {k: v for k, v in weights.items() if k.startswith("LTE.")},
      {"LTE": convert.abstract_params(LTE(), jnp.zeros((1, 16, 16, 3)))})["LTE"]
  lv3 = jax.jit(lambda x: LTE().apply({"params": lte_params}, to_unit_range(x))[2])
  lr, ref = lv3(nhwc(case_b["lrsr"])), lv3(nhwc(case_b["refsr"])[:, :148, :108])
  s_exact, idx_exact = search_jit(lr, ref, 100)
  s_fact, idx_fact = search_features_jit(lr, ref, "factored", 100)
  agree = np.asarray(idx_fact) == np.asarray(idx_exact)
  # Where the reference's own search was fragile, float noise may pick either near-equal patch.
  assert agree[~case_b["R_fragile"]].all()
  np.testing.assert_allclose(np.asarray(s_fact).ravel()[agree[0]],
                             np.asarray(s_exact).ravel()[agree[0]], rtol=0,
                             atol=_cosine_bound(lr.shape[-1]))


@pytest.mark.parametrize("chunk_size,key_positions", [(11, 91), (40, 240), (1024, 57600),
                                                      (1024, 10 ** 7), (1, 1)])
def test_factored_tiles_hold_no_more_than_an_exact_block(chunk_size, key_positions):
  side = tile_side(chunk_size, key_positions)
  assert 1 <= side <= FACTORED_TILE_SIDE
  # The largest such side: its block fits exact's, one more would not (unless capped or at 1).
  assert side == 1 or (side + 2) ** 4 <= chunk_size * key_positions
  assert side == FACTORED_TILE_SIDE or (side + 3) ** 4 > chunk_size * key_positions
  assert tile_side(0, key_positions) == 0  # whole grids


def test_factored_search_breaks_ties_as_exact_does():
  """A periodic reference holds each of its patches many times, with bit-equal scores: `exact`'s
  argmax takes the lowest index among them, and so must `factored`, whichever tiles they fall
  in."""
  rng = np.random.default_rng(1)
  period = (3, 4)
  ref = np.tile(np.maximum(rng.standard_normal((1, *period, 8)), 0), (1, 5, 4, 1))  # 15 x 16
  lr = ref[:, 2:11, 1:12]
  rows, cols = np.mgrid[1:8, 1:10]  # LR positions whose patch lies inside the reference's
  # The first reference position (not on the zero-padded border) of the same phase.
  want = ((rows + 2 - 1) % period[0] + 1) * 16 + (cols + 1 - 1) % period[1] + 1
  inner = np.zeros((9, 11), bool)
  inner[1:8, 1:10] = True
  lr, ref = jnp.asarray(lr, jnp.float32), jnp.asarray(ref, jnp.float32)
  _, idx_exact = search_jit(lr, ref, 0)
  np.testing.assert_array_equal(np.asarray(idx_exact)[0][inner.ravel()], want.ravel())
  for chunk_size in (0, 11, 40):  # whole; tiles of 5 x 5 and 7 x 7 positions
    _, idx = search_features_jit(lr, ref, "factored", chunk_size)
    np.testing.assert_array_equal(np.asarray(idx)[0][inner.ravel()], want.ravel())


@pytest.mark.parametrize("grid", [(45, 40), (7, 3), (1, 5), (6, 1)])
def test_grid_argmax_is_argmax_over_the_flattened_grid(grid):
  """Scores of a few integer values tie often, within a row, within a column and across both:
  the position must be argmax's (the lowest flat index of the maximum) and the value the max."""
  scores = jax.random.randint(jax.random.key(sum(grid)), (2, 300, *grid), 0, 4).astype(jnp.float32)
  value, position = jax.jit(_grid_argmax)(scores)
  flat = scores.reshape(2, 300, -1)
  np.testing.assert_array_equal(np.asarray(position)[..., 0], np.asarray(jnp.argmax(flat, -1)))
  np.testing.assert_array_equal(np.asarray(value)[..., 0], np.asarray(jnp.max(flat, -1)))


@pytest.mark.parametrize("offset", [(4, 6), (3, 5)])  # on the coarse search's 2x2 cells, and not
def test_coarse_search_finds_a_pasted_copy(offset):
  """The reference holds a copy of the LR features: every LR position whose patch lies inside
  the copy has a perfect match there (cosine 1), which `coarse` must find as `exact` does."""
  rng = np.random.default_rng(0)
  # Post-ReLU features, smooth as image features are: 2x2 blocks of values plus a little noise.
  relu_normal = lambda shape: np.maximum(rng.standard_normal(shape), 0)
  coarse = relu_normal((1, 6, 7, 16)).repeat(2, axis=1).repeat(2, axis=2)
  lr = (coarse + 0.1 * rng.random(coarse.shape)).astype(np.float32)
  ref = relu_normal((1, 24, 22, 16)).astype(np.float32)
  r0, c0 = offset
  ref[:, r0:r0 + 12, c0:c0 + 14] = lr
  inner = np.zeros((12, 14), bool)
  inner[1:-1, 1:-1] = True  # border patches see the LR image's zero padding, not the copy's
  rows, cols = np.nonzero(inner)
  want = (rows + r0) * 22 + cols + c0
  _, idx_exact = search_jit(jnp.asarray(lr), jnp.asarray(ref), 0)
  np.testing.assert_array_equal(np.asarray(idx_exact)[0][inner.ravel()], want)
  for chunk_size in (0, 5):
    s, idx = search_features_jit(jnp.asarray(lr), jnp.asarray(ref), "coarse", chunk_size)
    np.testing.assert_array_equal(np.asarray(idx)[0][inner.ravel()], want)
    np.testing.assert_allclose(np.asarray(s)[0].ravel()[inner.ravel()], 1,
                               atol=_cosine_bound(lr.shape[-1]))


def test_unknown_search_mode_is_a_one_line_error():
  with pytest.raises(ValueError, match=r"^config.eval.search_mode 'fast': expected one of "
                     r"exact, factored, coarse$"):
    check_search_mode("fast", "config.eval.search_mode")
