"""Relevance embedding (search) and hard/soft attention (transfer), reference
`model/SearchTransfer.py`.

The reference unfolds 3x3 patches of the LR and reference lv3 features, L2-normalises them, builds
the whole (h*w x H*W) relevance matrix R, takes S = max and the argmax over reference positions,
then gathers unfolded reference patches at three levels and folds them back (summing overlaps,
dividing by 9).

Here the argmax is found over blocks of LR positions (`chunk_size`), so at most
(chunk_size x h*w) of R exists at a time; S is then recomputed as the dot product of the two
selected normalised patches, which is the value the reference's max picks and sends its gradient
to exactly that entry (as PyTorch's max does), so the backward pass never touches R. The fold of
gathered patches is written as nine gathers straight from the reference feature maps: output pixel
q receives, from each of the (up to) 3x3 LR positions i whose window covers it, the reference value
at q + s * (index(i) - i), which is what unfold -> gather -> fold computes without the
(patch_length x H*W) intermediates.

Besides that `exact` search (the reference's numbers, used in training and evaluation), two
search modes for inference on large images (docs/inference.md):

* `factored`: the inner product of two zero-padded 3x3 patches is the sum over the nine offsets o
  of the C-channel inner products <f(p+o), g(r+o)>, so the scores of all pairs are one C-channel
  correlation between positions followed by a sum of nine diagonally shifted copies of it, divided
  by the key's norm (the query's norm is the same for a whole row and does not move its argmax).
  The same numbers summed in another order, with 9x fewer multiply-adds, and the reference side
  needs only its lv3 map, not its 9x unfolded keys. It runs over square tiles of LR positions
  against square tiles of reference positions (one position of context around each), so that
  memory stays bounded and the correlation block and its shifted sums stay near the CPU's caches.
* `coarse`: coarse-to-fine matching as in MASA-SR (Lu et al., CVPR 2021): a factored search on
  2x2-average-pooled features gives a few candidate cells of the reference for each 2x2 cell of
  LR positions; each LR position then takes the best patch, scored exactly, in the
  neighbourhoods of those cells at full resolution.

Both recompute S from the chosen pair as `exact` does.
"""

import math
from typing import Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp

_NORM_EPS = 1e-12
SEARCH_MODES = ("exact", "factored", "coarse")
# `coarse`: candidate reference cells kept per 2x2 cell of LR positions, and the margin, in
# full-resolution positions, of the neighbourhood searched around each.
COARSE_CANDIDATES = 4
COARSE_MARGIN = 1
# Largest side of the `factored` search's square tiles. Larger tiles waste less on their one
# position of context ((side + 2)^2 / side^2 of the products) and give larger matrix products,
# smaller ones keep the correlation block, (side + 2)^4 floats (19.5 MB at 45), closer to the
# cores' caches; the time levels off from about this side (docs/benchmarks.md).
FACTORED_TILE_SIDE = 45


def check_search_mode(mode: str, name: str = "search_mode") -> None:
  """Raises ValueError (one line naming `name`) unless `mode` is one of SEARCH_MODES."""
  if mode not in SEARCH_MODES:
    raise ValueError(f"{name} {mode!r}: expected one of {', '.join(SEARCH_MODES)}")


def unfold3x3(x: jnp.ndarray) -> jnp.ndarray:
  """(N, H, W, C) -> (N, H*W, 9*C): zero-padded 3x3 patches, row-major positions."""
  n, h, w, c = x.shape
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  shifts = [padded[:, di:di + h, dj:dj + w, :] for di in range(3) for dj in range(3)]
  return jnp.concatenate(shifts, axis=-1).reshape(n, h * w, 9 * c)


def l2_normalize(v: jnp.ndarray) -> jnp.ndarray:
  """`F.normalize(v, dim=-1)`: v / max(||v||, 1e-12), with a gradient that stays finite at 0."""
  sumsq = jnp.sum(v * v, axis=-1, keepdims=True)
  return v / jnp.sqrt(jnp.maximum(sumsq, _NORM_EPS * _NORM_EPS))


def _fill_in_blocks(compute, out: jnp.ndarray, block: int) -> jnp.ndarray:
  """`out` with its axis 1 filled block by block: `compute(start)` gives the `block` rows that
  start at `start`. The last block starts early enough to end at the last row; the rows it
  shares with the block before get the same values again."""
  size = out.shape[1]

  def body(i, out):
    start = jnp.minimum(i * block, size - block)
    return jax.lax.dynamic_update_slice_in_dim(out, compute(start), start, axis=1)

  return jax.lax.fori_loop(0, -(-size // block), body, out)


def _relevance_argmax(query: jnp.ndarray, keys: jnp.ndarray, chunk_size: int) -> jnp.ndarray:
  """argmax_j <keys[j], query[i]> for each i, over blocks of `chunk_size` queries.

  Returns (N, Q)."""
  precision = jax.lax.Precision.HIGHEST

  def block_argmax(q_block):
    scores = jnp.einsum("nqd,nkd->nqk", q_block, keys, precision=precision)
    return jnp.argmax(scores, axis=-1).astype(jnp.int32)

  n, num_queries, _ = query.shape
  if chunk_size <= 0 or chunk_size >= num_queries:
    return block_argmax(query)
  # Slices of the query array itself (no padded or reordered copy of it).
  return _fill_in_blocks(
      lambda start: block_argmax(jax.lax.dynamic_slice_in_dim(query, start, chunk_size, axis=1)),
      jnp.zeros((n, num_queries), jnp.int32), chunk_size)


def reference_keys(refsr_lv3: jnp.ndarray, rows_per_block: int = 0) -> jnp.ndarray:
  """(N, h, w, 9C) L2-normalised 3x3 patches of the reference's lv3 features: the search's keys.

  They depend on the reference alone, so tiled inference computes them once per reference.
  `rows_per_block` > 0 unfolds and normalises that many rows of positions at a time, straight
  into the output, so that at most one block's unfolded patches exist besides it (the keys are
  9x the lv3 map); 0 does all rows at once.
  """
  n, h, w, c = refsr_lv3.shape
  if rows_per_block <= 0 or rows_per_block >= h:
    return l2_normalize(unfold3x3(refsr_lv3)).reshape(n, h, w, 9 * c)
  # A block's patches need one row of context on each side: zeros at the image's top and bottom
  # (as unfold3x3 pads), the neighbouring rows elsewhere.
  padded = jnp.pad(refsr_lv3, ((0, 0), (1, 1), (0, 0), (0, 0)))

  def block_keys(start):
    rows = jax.lax.dynamic_slice_in_dim(padded, start, rows_per_block + 2, axis=1)
    patches = l2_normalize(unfold3x3(rows)).reshape(n, rows_per_block + 2, w, 9 * c)
    return patches[:, 1:-1]

  return _fill_in_blocks(block_keys, jnp.zeros((n, h, w, 9 * c), refsr_lv3.dtype), rows_per_block)


def search(lrsr_lv3: jnp.ndarray, refsr_lv3: jnp.ndarray, chunk_size: int = 0,
           index: Optional[jnp.ndarray] = None) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Hard-attention index and soft-attention S.

  Args:
    lrsr_lv3: (N, H, W, C) LTE lv3 features of the upsampled LR image.
    refsr_lv3: (N, h, w, C) LTE lv3 features of the down-up reference.
    chunk_size: LR positions per block of the relevance matrix; 0 computes it whole.
    index: optional (N, H*W) reference indices to use instead of the argmax ("teacher forcing",
      for parity tests at positions where float noise may pick another near-equal patch).

  Returns:
    S (N, H, W, 1) and the (N, H*W) row-major index into the h x w reference grid.
  """
  return search_keys(lrsr_lv3, reference_keys(refsr_lv3), chunk_size, index)


def search_keys(lrsr_lv3: jnp.ndarray, keys: jnp.ndarray, chunk_size: int = 0,
                index: Optional[jnp.ndarray] = None) -> tuple[jnp.ndarray, jnp.ndarray]:
  """`search` against precomputed `reference_keys` (N, h, w, 9C)."""
  n, h, w, _ = lrsr_lv3.shape
  query = l2_normalize(unfold3x3(lrsr_lv3))
  keys = keys.reshape(n, -1, keys.shape[-1])
  if index is None:
    index = _relevance_argmax(jax.lax.stop_gradient(query), jax.lax.stop_gradient(keys), chunk_size)
  index = index.astype(jnp.int32)
  selected = jnp.take_along_axis(keys, index[:, :, None], axis=1)
  s = jnp.sum(query * selected, axis=-1)
  return s.reshape(n, h, w, 1), index


def _box3x3(x: jnp.ndarray) -> jnp.ndarray:
  """(N, h, w) -> (N, h, w): sums of the zero-padded 3x3 neighbourhoods."""
  _, h, w = x.shape
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1)))
  return sum(padded[:, di:di + h, dj:dj + w] for di in range(3) for dj in range(3))


def inverse_key_norms(refsr_lv3: jnp.ndarray) -> jnp.ndarray:
  """(N, h, w): 1 / the norm of each position's zero-padded 3x3 patch (as `l2_normalize`
  divides), from per-position squared norms instead of unfolded patches."""
  sumsq = _box3x3(jnp.sum(refsr_lv3 * refsr_lv3, axis=-1))
  return 1 / jnp.sqrt(jnp.maximum(sumsq, _NORM_EPS * _NORM_EPS))


def _patch_scores(query_rows: jnp.ndarray, key_rows: jnp.ndarray,
                  key_scale: jnp.ndarray) -> jnp.ndarray:
  """Inner products of all 3x3 patches of two feature windows, scaled per key.

  Args:
    query_rows: (B, a+2, W+2, C) zero-padded features whose inner (a, W) positions are queries.
    key_rows: (B, b+2, w+2, C) the same for (b, w) key positions.
    key_scale: (B, b, w) factor of each key's scores (1 / its norm).

  Returns:
    (B, a, W, b, w) scores.
  """
  corr = jnp.einsum("nijc,nklc->nijkl", query_rows, key_rows,
                    precision=jax.lax.Precision.HIGHEST)
  _, a2, w2, b2, v2 = corr.shape
  a, width, b, w = a2 - 2, w2 - 2, b2 - 2, v2 - 2
  scores = sum(corr[:, di:di + a, dj:dj + width, di:di + b, dj:dj + w]
               for di in range(3) for dj in range(3))
  return scores * key_scale[:, None, None]


def _windows(x: jnp.ndarray, rows: jnp.ndarray, cols: jnp.ndarray,
             size: tuple[int, int]) -> jnp.ndarray:
  """x[b, rows + i, cols + j] for i, j < size, zeros outside x, as if x were zero-padded.

  x: (N, H, W, ...); rows, cols: (N, ...) top-left corners, which may lie outside x. Returns
  (N, ..., size[0], size[1], ...). Gathers instead of padding x: a padded copy of a large
  reference's features would cost as much memory as the features themselves."""
  n, height, width = x.shape[:3]
  r = rows[..., None, None] + jnp.arange(size[0])[:, None]
  c = cols[..., None, None] + jnp.arange(size[1])[None, :]
  inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
  batch = jnp.arange(n).reshape((n,) + (1,) * (r.ndim - 1))
  values = x[batch, jnp.clip(r, 0, height - 1), jnp.clip(c, 0, width - 1)]
  return jnp.where(inside.reshape(inside.shape + (1,) * (x.ndim - 3)), values, 0)


def _top(scores: jnp.ndarray, count: int) -> tuple[jnp.ndarray, jnp.ndarray]:
  """The `count` largest of (..., K) scores and their positions, best first."""
  values, index = jax.lax.top_k(scores, count)
  return values, index.astype(jnp.int32)


def _grid_argmax(scores: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """The largest of (..., rows, cols) finite scores and its row-major position, the lower
  position first among equal scores (as argmax over the flattened grid).

  The best of each column comes first, as elementwise comparisons of whole rows, then the best
  of the columns' bests: XLA:CPU vectorises elementwise work along a row, where its argmax
  reduction runs one score at a time."""
  rows, cols = scores.shape[-2:]
  best, best_row = scores[..., 0, :], jnp.zeros(scores.shape[:-2] + (cols,), jnp.int32)
  for row in range(1, rows):
    take = scores[..., row, :] > best  # strictly: the lower row keeps a tie
    best = jnp.where(take, scores[..., row, :], best)
    best_row = jnp.where(take, row, best_row)
  value = jnp.max(best, axis=-1, keepdims=True)
  position = jnp.where(best == value, best_row * cols + jnp.arange(cols), rows * cols)
  return value, jnp.min(position, axis=-1, keepdims=True)


def tile_layout(size: int, side: int) -> tuple[int, int]:
  """(tiles, length): the fewest tiles of at most `side` positions (0: all) that cover `size`
  positions, all of one length; the last starts early enough to end at the last position."""
  if side <= 0 or side >= size:
    return 1, size
  tiles = -(-size // side)
  return tiles, -(-size // tiles)


def tile_side(chunk_size: int, key_positions: int) -> int:
  """Side of the square tiles of positions the `factored` search scores against each other for a
  search chunk size (0: whole grids): at most FACTORED_TILE_SIDE, and small enough that a tile
  pair's correlation block, (side + 2)^4 floats, holds no more than `exact`'s block of
  `chunk_size` queries against all `key_positions`."""
  if chunk_size <= 0:
    return 0
  side = math.isqrt(math.isqrt(chunk_size * key_positions)) - 2  # the floor of the 4th root
  return max(1, min(side, FACTORED_TILE_SIDE))


def _tile_starts(grid_hw: tuple[int, int], side: int
                 ) -> tuple[jnp.ndarray, jnp.ndarray, tuple[int, int]]:
  """((T, 2) top-left corners, (T, 2) first rows and columns that no earlier tile covers, (rows,
  cols) of each tile) of `tile_layout` tiles of a grid: only the last tile of a row or column
  starts before its share, to end at the grid's edge."""
  (row_tiles, rows), (col_tiles, cols) = (tile_layout(size, side) for size in grid_hw)
  shares = lambda tiles, length: jnp.arange(tiles) * length
  r, c = jnp.meshgrid(shares(row_tiles, rows), shares(col_tiles, cols), indexing="ij")
  share = jnp.stack([r.ravel(), c.ravel()], axis=-1)
  return jnp.minimum(share, jnp.array(grid_hw) - jnp.array([rows, cols])), share, (rows, cols)


def _merge_best(kept: tuple[jnp.ndarray, jnp.ndarray], new: tuple[jnp.ndarray, jnp.ndarray],
                count: int) -> tuple[jnp.ndarray, jnp.ndarray]:
  """The `count` best of two (values, indices) lists of (..., count) candidates. For count 1,
  the lower index wins a tie, as argmax over all keys would pick it; for more, the kept ones."""
  if count == 1:
    take = (new[0] > kept[0]) | ((new[0] == kept[0]) & (new[1] < kept[1]))
    return jnp.where(take, new[0], kept[0]), jnp.where(take, new[1], kept[1])
  values, best = _top(jnp.concatenate([kept[0], new[0]], axis=-1), count)
  return values, jnp.take_along_axis(jnp.concatenate([kept[1], new[1]], axis=-1), best, axis=-1)


def _factored_top(query: jnp.ndarray, keys: jnp.ndarray, count: int, side: int) -> jnp.ndarray:
  """The `count` best keys of every query by normalised 3x3-patch inner product, as
  (N, H*W, count) row-major indices into keys' (h, w) grid, best first.

  query (N, H, W, C) and keys (N, h, w, C) are feature maps. Square tiles of at most `side` x
  `side` queries are scored against tiles of as many keys (0: whole grids), the best kept as the
  key tiles go by: a tile pair's correlation block, its nine shifted sums and the argmax stay
  near the CPU's caches, where whole rows of positions would not (the shifted sums then wait on
  memory).
  """
  n, height, width, channels = query.shape
  _, key_h, key_w, _ = keys.shape
  count = min(count, key_h * key_w)
  key_scale = inverse_key_norms(keys)
  # A tile's positions with one position of context around: (N, rows + 2, cols + 2, C).
  with_context = lambda x, start, rows, cols: _windows(
      x, jnp.full((n,), start[0] - 1), jnp.full((n,), start[1] - 1), (rows + 2, cols + 2))
  query_starts, _, (rows, cols) = _tile_starts((height, width), side)
  key_starts, key_shares, (key_rows, key_cols) = _tile_starts((key_h, key_w), side)

  def query_tile(index, start):
    window = with_context(query, start, rows, cols)

    def key_tile(kept, key_tile_starts):
      key_start, key_share = key_tile_starts
      scores = _patch_scores(
          window, with_context(keys, key_start, key_rows, key_cols),
          jax.lax.dynamic_slice(key_scale, (0, *key_start), (n, key_rows, key_cols)))
      scores = scores.reshape(n, rows * cols, key_rows, key_cols)
      if count == 1:
        values, local = _grid_argmax(scores)
      else:
        # A key that an earlier tile scored too would take two of the `count` places.
        r = key_start[0] + jnp.arange(key_rows)[:, None]
        c = key_start[1] + jnp.arange(key_cols)[None, :]
        first_time = (r >= key_share[0]) & (c >= key_share[1])
        scores = jnp.where(first_time, scores, -jnp.inf)
        values, local = _top(scores.reshape(n, rows * cols, -1), count)
      r, c = jnp.divmod(local, key_cols)
      return _merge_best(kept, (values, (key_start[0] + r) * key_w + key_start[1] + c),
                         count), None

    kept = (jnp.full((n, rows * cols, count), -jnp.inf, query.dtype),
            jnp.zeros((n, rows * cols, count), jnp.int32))
    (_, best), _ = jax.lax.scan(key_tile, kept, (key_starts, key_shares))
    # Overlapping tiles write the same indices again.
    return jax.lax.dynamic_update_slice(index, best.reshape(n, rows, cols, count),
                                        (0, start[0], start[1], 0)), None

  index, _ = jax.lax.scan(query_tile, jnp.zeros((n, height, width, count), jnp.int32),
                          query_starts)
  return index.reshape(n, height * width, count)


def _pool2x2(x: jnp.ndarray) -> jnp.ndarray:
  """(N, H, W, C) -> (N, ceil(H/2), ceil(W/2), C) means of 2x2 cells (zero-padded to even)."""
  n, h, w, c = x.shape
  x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
  return x.reshape(n, x.shape[1] // 2, 2, x.shape[2] // 2, 2, c).mean(axis=(2, 4))


def _coarse_argmax(query: jnp.ndarray, keys: jnp.ndarray, chunk_size: int) -> jnp.ndarray:
  """(N, H*W) approximate argmax of the normalised 3x3-patch inner product: the best of the
  exactly scored patches around the `COARSE_CANDIDATES` best cells of a 2x2-pooled search."""
  n, height, width, _ = query.shape
  _, key_h, key_w, _ = keys.shape
  cells_h, cells_w = -(-height // 2), -(-width // 2)
  cells_key_w = -(-key_w // 2)
  pooled_keys = _pool2x2(keys)
  cells = _factored_top(_pool2x2(query), pooled_keys, COARSE_CANDIDATES,
                        tile_side(chunk_size, pooled_keys.shape[1] * pooled_keys.shape[2]))
  count = cells.shape[-1]
  m = COARSE_MARGIN
  side = 2 + 2 * m  # key positions per side of a candidate's neighbourhood
  key_scale = inverse_key_norms(keys)
  valid = jnp.ones((n, key_h, key_w), bool)
  cell_r, cell_c = jnp.divmod(jnp.arange(cells_h * cells_w), cells_w)
  block = chunk_size if 0 < chunk_size < cells_h * cells_w else cells_h * cells_w

  def cell_block(start):
    sl = lambda x: jax.lax.dynamic_slice_in_dim(x, start, block, axis=x.ndim - 1)
    rows, cols = sl(cell_r)[None], sl(cell_c)[None]
    # Each cell's 2x2 positions with one position of context around.
    q = _windows(query, 2 * rows - 1, 2 * cols - 1, (4, 4))  # (N, B, 4, 4, C)
    cand = jax.lax.dynamic_slice_in_dim(cells, start, block, axis=1)  # (N, B, count)
    key_r, key_c = 2 * (cand // cells_key_w), 2 * (cand % cells_key_w)
    # A neighbourhood's positions start m before the cell and need one more of context.
    k = _windows(keys, key_r - m - 1, key_c - m - 1, (side + 2,) * 2)  # (N, B, count, .., C)
    # The keys as the left operand: XLA:CPU runs these many small products several times faster
    # that way round.
    corr = jnp.einsum("nbkuvc,nbijc->nbkuvij", k, q, precision=jax.lax.Precision.HIGHEST)
    scores = sum(corr[:, :, :, di:di + side, dj:dj + side, di:di + 2, dj:dj + 2]
                 for di in range(3) for dj in range(3))  # (N, B, count, side, side, 2, 2)
    scale = _windows(key_scale, key_r - m, key_c - m, (side, side))[..., None, None]
    inside = _windows(valid, key_r - m, key_c - m, (side, side))[..., None, None]
    scores = jnp.where(inside, scores * scale, -jnp.inf)
    best = jnp.argmax(scores.reshape(n, block, count * side * side, 2, 2), axis=2)
    k_index, offset = jnp.divmod(best, side * side)
    off_r, off_c = jnp.divmod(offset, side)
    chosen = jnp.take_along_axis(cand, k_index.reshape(n, block, 4), axis=-1)
    chosen = chosen.reshape(n, block, 2, 2)
    r = 2 * (chosen // cells_key_w) - m + off_r
    s = 2 * (chosen % cells_key_w) - m + off_c
    return (r * key_w + s).astype(jnp.int32)  # (N, B, 2, 2)

  out = jnp.zeros((n, cells_h * cells_w, 2, 2), jnp.int32)
  index = cell_block(0) if block == cells_h * cells_w else _fill_in_blocks(cell_block, out, block)
  index = index.reshape(n, cells_h, cells_w, 2, 2).transpose(0, 1, 3, 2, 4)
  return index.reshape(n, 2 * cells_h, 2 * cells_w)[:, :height, :width].reshape(n, -1)


def selected_patches(refsr_lv3: jnp.ndarray, index: jnp.ndarray) -> jnp.ndarray:
  """(N, Q, 9C): the zero-padded 3x3 patches (as `unfold3x3` orders them) of the (N, Q)
  row-major positions `index` of refsr_lv3's grid."""
  n, _, w, c = refsr_lv3.shape
  patches = _windows(refsr_lv3, index // w - 1, index % w - 1, (3, 3))  # (N, Q, 3, 3, C)
  return patches.reshape(n, -1, 9 * c)


def search_features(lrsr_lv3: jnp.ndarray, refsr_lv3: jnp.ndarray, mode: str,
                    chunk_size: int = 0, index: Optional[jnp.ndarray] = None
                    ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """`search` in the `factored` or `coarse` mode, from the reference's lv3 map itself.

  `chunk_size` > 0: `factored` scores square tiles of LR positions against tiles of as many
  reference positions, their correlation block no larger than `exact`'s (`tile_side`); `coarse`
  does so on its pooled grids and refines `chunk_size` 2x2 cells at a time."""
  n, h, w, _ = lrsr_lv3.shape
  if index is None:
    query, keys = jax.lax.stop_gradient(lrsr_lv3), jax.lax.stop_gradient(refsr_lv3)
    if mode == "factored":
      key_positions = keys.shape[1] * keys.shape[2]
      index = _factored_top(query, keys, 1, tile_side(chunk_size, key_positions))[..., 0]
    else:
      index = _coarse_argmax(query, keys, chunk_size)
  index = index.astype(jnp.int32)
  query = l2_normalize(unfold3x3(lrsr_lv3))
  s = jnp.sum(query * l2_normalize(selected_patches(refsr_lv3, index)), axis=-1)
  return s.reshape(n, h, w, 1), index


class Conv3x3Relu(NamedTuple):
  """A feature map given as relu(3x3 convolution of `image`, zero-padded, + bias), (N, H, W, C)
  image, HWIO kernel: the transfer computes its values only where it reads them, from the
  image's pixels, instead of holding the whole map (with 64 channels, 21x the image)."""

  image: jnp.ndarray
  kernel: jnp.ndarray
  bias: jnp.ndarray

  @property
  def shape(self) -> tuple[int, ...]:
    """The map's shape, (N, H, W, output channels), as an array's."""
    return (*self.image.shape[:3], self.kernel.shape[-1])

  @property
  def dtype(self) -> jnp.dtype:
    return self.image.dtype


Level = Union[jnp.ndarray, Conv3x3Relu]


def _reader(level: Level) -> Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]:
  """(src_r, src_c) (N, ...) -> (N, P, C): the level's values at those positions, clipped into
  it (the caller masks the positions outside)."""
  if isinstance(level, Conv3x3Relu):
    image, kernel, bias = level
    height, width = image.shape[1:3]

    def read_computed(src_r, src_c):
      n = src_r.shape[0]
      rows = jnp.clip(src_r, 0, height - 1).reshape(n, -1)
      cols = jnp.clip(src_c, 0, width - 1).reshape(n, -1)
      patches = _windows(image, rows - 1, cols - 1, (3, 3))  # (N, P, 3, 3, C)
      out = jnp.einsum("npijc,ijco->npo", patches, kernel, precision=jax.lax.Precision.HIGHEST)
      return jax.nn.relu(out + bias)

    return read_computed
  n, height, width, c = level.shape
  flat_map = level.reshape(n, height * width, c)

  def read_map(src_r, src_c):
    flat = jnp.clip(src_r, 0, height - 1) * width + jnp.clip(src_c, 0, width - 1)
    return jnp.take_along_axis(flat_map, flat.reshape(n, -1, 1), axis=1)

  return read_map


def _transfer_level(level: Level, index_rc: tuple[jnp.ndarray, jnp.ndarray],
                    lr_hw: tuple[int, int], scale: int) -> jnp.ndarray:
  """Unfold (kernel 3s, stride s, padding s) -> gather -> fold (sum) / 9, as gathers."""
  ref_h, ref_w = level.shape[1:3]
  lr_h, lr_w = lr_hw
  idx_r, idx_c = index_rc  # (N, lr_h, lr_w) reference lv3 coordinates chosen for each LR position
  n = idx_r.shape[0]
  q_r = jnp.arange(lr_h * scale)[:, None]
  q_c = jnp.arange(lr_w * scale)[None, :]
  read = _reader(level)

  def offset_values(dr, dc):
    """Each output pixel's part from the LR position (dr, dc) away from its own: that position's
    chosen patch where it covers the pixel, zeros elsewhere."""
    i_r = q_r // scale + dr
    i_c = q_c // scale + dc
    covers = (i_r >= 0) & (i_r < lr_h) & (i_c >= 0) & (i_c < lr_w)
    j_r = idx_r[:, jnp.clip(i_r, 0, lr_h - 1), jnp.clip(i_c, 0, lr_w - 1)]
    j_c = idx_c[:, jnp.clip(i_r, 0, lr_h - 1), jnp.clip(i_c, 0, lr_w - 1)]
    src_r = q_r + scale * (j_r - i_r)
    src_c = q_c + scale * (j_c - i_c)
    valid = covers & (src_r >= 0) & (src_r < ref_h) & (src_c >= 0) & (src_c < ref_w)
    values = read(src_r, src_c)
    return jnp.where(valid.reshape(n, -1, 1), values, 0)

  if isinstance(level, Conv3x3Relu):
    # One offset at a time: each computes its patches and their convolution, which XLA would
    # otherwise hold for all nine offsets at once.
    total = jax.lax.fori_loop(
        0, 9, lambda k, total: total + offset_values(k // 3 - 1, k % 3 - 1),
        jnp.zeros((n, lr_h * scale * lr_w * scale, level.shape[-1]), level.dtype))
  else:
    total = None
    for dr in (-1, 0, 1):
      for dc in (-1, 0, 1):
        values = offset_values(dr, dc)
        total = values if total is None else total + values
  return (total / 9).reshape(n, lr_h * scale, lr_w * scale, -1)


def transfer(index: jnp.ndarray, ref_grid_w: int, lr_hw: tuple[int, int], ref_lv1: Level,
             ref_lv2: jnp.ndarray, ref_lv3: jnp.ndarray
             ) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """Hard attention: textures T_lv3 (H, W), T_lv2 (2H, 2W), T_lv1 (4H, 4W) for an (N, H*W) index."""
  n = index.shape[0]
  idx = index.reshape(n, *lr_hw)
  index_rc = (idx // ref_grid_w, idx % ref_grid_w)
  return (_transfer_level(ref_lv3, index_rc, lr_hw, 1),
          _transfer_level(ref_lv2, index_rc, lr_hw, 2),
          _transfer_level(ref_lv1, index_rc, lr_hw, 4))
