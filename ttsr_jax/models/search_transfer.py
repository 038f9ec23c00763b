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
"""

from typing import Optional

import jax
import jax.numpy as jnp

_NORM_EPS = 1e-12


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


def _transfer_level(ref_feat: jnp.ndarray, index_rc: tuple[jnp.ndarray, jnp.ndarray],
                    lr_hw: tuple[int, int], scale: int) -> jnp.ndarray:
  """Unfold (kernel 3s, stride s, padding s) -> gather -> fold (sum) / 9, as gathers."""
  n, ref_h, ref_w, c = ref_feat.shape
  lr_h, lr_w = lr_hw
  idx_r, idx_c = index_rc  # (N, lr_h, lr_w) reference lv3 coordinates chosen for each LR position
  q_r = jnp.arange(lr_h * scale)[:, None]
  q_c = jnp.arange(lr_w * scale)[None, :]
  ref_flat = ref_feat.reshape(n, ref_h * ref_w, c)
  total = None
  for dr in (-1, 0, 1):
    for dc in (-1, 0, 1):
      i_r = q_r // scale + dr
      i_c = q_c // scale + dc
      covers = (i_r >= 0) & (i_r < lr_h) & (i_c >= 0) & (i_c < lr_w)
      j_r = idx_r[:, jnp.clip(i_r, 0, lr_h - 1), jnp.clip(i_c, 0, lr_w - 1)]
      j_c = idx_c[:, jnp.clip(i_r, 0, lr_h - 1), jnp.clip(i_c, 0, lr_w - 1)]
      src_r = q_r + scale * (j_r - i_r)
      src_c = q_c + scale * (j_c - i_c)
      valid = covers & (src_r >= 0) & (src_r < ref_h) & (src_c >= 0) & (src_c < ref_w)
      flat = jnp.clip(src_r, 0, ref_h - 1) * ref_w + jnp.clip(src_c, 0, ref_w - 1)
      values = jnp.take_along_axis(ref_flat, flat.reshape(n, -1, 1), axis=1)
      values = jnp.where(valid.reshape(n, -1, 1), values, 0)
      total = values if total is None else total + values
  return (total / 9).reshape(n, lr_h * scale, lr_w * scale, c)


def transfer(index: jnp.ndarray, ref_grid_w: int, lr_hw: tuple[int, int], ref_lv1: jnp.ndarray,
             ref_lv2: jnp.ndarray, ref_lv3: jnp.ndarray
             ) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """Hard attention: textures T_lv3 (H, W), T_lv2 (2H, 2W), T_lv1 (4H, 4W) for an (N, H*W) index."""
  n = index.shape[0]
  idx = index.reshape(n, *lr_hw)
  index_rc = (idx // ref_grid_w, idx % ref_grid_w)
  return (_transfer_level(ref_lv3, index_rc, lr_hw, 1),
          _transfer_level(ref_lv2, index_rc, lr_hw, 2),
          _transfer_level(ref_lv1, index_rc, lr_hw, 4))
