"""TTSR: LTE + search/transfer + MainNet (reference `model/TTSR.py`)."""

from typing import NamedTuple, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from ttsr_jax.models import precision as precision_lib
from ttsr_jax.models.lte import LTE, lv1_conv, lv1_input
from ttsr_jax.models.main_net import MainNet
from ttsr_jax.models.search_transfer import (Conv3x3Relu, check_search_mode, reference_keys,
                                             search_features, search_keys, transfer)


# The constructor fields that fix the parameters and the function they compute; the others
# (search_chunk_size, search_mode, precision, remat) change only how it is computed
# (search_mode 'coarse' approximates the search).
ARCHITECTURE_KEYS = ("n_feats", "num_res_blocks", "res_scale", "lte_reduce_lv3")


class ReferenceFeatures(NamedTuple):
  """What the model needs of a reference, independent of the LR image: the search's keys and the
  LTE features of `ref` at three levels (N, Hr, Wr, 64), (N, Hr/2, Wr/2, 128), (N, h, w, C3), with
  h, w = Hr/4, Wr/4.

  In the `exact` search mode the keys are the normalised unfolded patches (N, h, w, 9C). In the
  others they are refsr's lv3 features themselves (N, h, w, C), and `lv1` is `ref` as the LTE's
  first convolution reads it (N, Hr, Wr, 3): the transfer computes lv1 only for the patches it
  takes (`search_transfer.Conv3x3Relu`), so a large reference's memory is not 64 channels at its
  full resolution."""

  keys: jnp.ndarray
  lv1: jnp.ndarray
  lv2: jnp.ndarray
  lv3: jnp.ndarray


class TTSROutput(NamedTuple):
  """Model outputs, NHWC: sr (N,4H,4W,3), S (N,H,W,1), T_lv3 (N,H,W,C3), T_lv2 (N,2H,2W,128),
  T_lv1 (N,4H,4W,64), and the hard-attention index (N, H*W) into the reference's lv3 grid."""

  sr: jnp.ndarray
  S: jnp.ndarray
  T_lv3: jnp.ndarray
  T_lv2: jnp.ndarray
  T_lv1: jnp.ndarray
  index: jnp.ndarray


def to_unit_range(x: jnp.ndarray) -> jnp.ndarray:
  """[-1, 1] images -> [0, 1], the input range of every VGG-style network."""
  return (x + 1.0) / 2.0


class TTSR(nn.Module):
  """Texture transformer super-resolution, x4.

  Inputs are NHWC images in [-1, 1]: lr (N,H,W,3), lrsr (N,4H,4W,3), ref and refsr (N,Hr,Wr,3)
  with any Hr, Wr (multiples of 4 in every data path), independent of H and W.
  Parameters: {'LTE': ..., 'MainNet': ...}; the LTE's get their own learning rate.
  """

  n_feats: int = 64
  num_res_blocks: Sequence[int] = (16, 16, 8, 4)
  res_scale: float = 1.0
  lte_reduce_lv3: bool = False
  search_chunk_size: int = 0
  search_mode: str = "exact"  # one of search_transfer.SEARCH_MODES
  precision: str = "exact"  # a policy of models/precision.py
  remat: bool = False

  def setup(self):
    check_search_mode(self.search_mode)
    dtype = lambda network: precision_lib.compute_dtype(self.precision, network)
    self.LTE = LTE(reduce_lv3=self.lte_reduce_lv3, dtype=dtype("lte"))
    self.MainNet = MainNet(n_feats=self.n_feats, num_res_blocks=tuple(self.num_res_blocks),
                           res_scale=self.res_scale, dtype=dtype("main_net"), remat=self.remat)

  def __call__(self, lr, lrsr, ref, refsr, index: Optional[jnp.ndarray] = None) -> TTSROutput:
    """`index` (N, H*W) replaces the search's argmax (teacher forcing for parity tests; the
    microbatched train step reuses its first forward pass's).

    Every output is float32 whatever the precision policy (the losses reduce them in float32).
    """
    # The LR side's LTE pass first, then the reference's: the order of the three passes fixes the
    # order in which their gradients add up in the shared LTE, and so training's float rounding;
    # keep it, or trained results stop being reproducible across versions.
    lrsr_lv3 = self._lrsr_features(lrsr)
    return self._search_and_transfer(lr, lrsr_lv3, self.reference_features(ref, refsr), index)

  def reference_features(self, ref: jnp.ndarray, refsr: jnp.ndarray) -> ReferenceFeatures:
    """The reference's part of the forward pass, computed once and reused for any LR image."""
    refsr_lv3, (lv1, lv2, lv3) = self.reference_textures(ref, refsr)
    if self.search_mode == "exact":
      return ReferenceFeatures(reference_keys(refsr_lv3), lv1, lv2, lv3)
    return ReferenceFeatures(refsr_lv3, lv1_input(to_unit_range(ref)), lv2, lv3)

  def reference_textures(self, ref: jnp.ndarray, refsr: jnp.ndarray
                         ) -> tuple[jnp.ndarray, tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]]:
    """The reference's LTE features: refsr's lv3 (what `reference_keys` unfolds) and ref's three
    levels."""
    _, _, refsr_lv3 = self.texture_features(to_unit_range(refsr))
    return refsr_lv3, self.texture_features(to_unit_range(ref))

  def with_reference(self, lr, lrsr, reference: ReferenceFeatures,
                     index: Optional[jnp.ndarray] = None) -> TTSROutput:
    """The forward pass for precomputed `reference_features` (the same numbers as __call__)."""
    return self._search_and_transfer(lr, self._lrsr_features(lrsr), reference, index)

  def _lrsr_features(self, lrsr: jnp.ndarray) -> jnp.ndarray:
    return self.texture_features(to_unit_range(lrsr))[2]

  def _search_and_transfer(self, lr, lrsr_lv3, reference: ReferenceFeatures,
                           index: Optional[jnp.ndarray]) -> TTSROutput:
    if self.search_mode == "exact":
      s, index = search_keys(lrsr_lv3, reference.keys, self.search_chunk_size, index)
    else:
      s, index = search_features(lrsr_lv3, reference.keys, self.search_mode,
                                 self.search_chunk_size, index)
    lv1 = reference.lv1
    if self.search_mode != "exact":
      lv1 = Conv3x3Relu(lv1, *lv1_conv(self.LTE.variables["params"]))
    lr_hw = lr.shape[1:3]
    t_lv3, t_lv2, t_lv1 = transfer(index, reference.keys.shape[2], lr_hw, lv1, reference.lv2,
                                   reference.lv3)
    sr = self.MainNet(lr, s, t_lv3, t_lv2, t_lv1).astype(jnp.float32)
    return TTSROutput(sr, s, t_lv3, t_lv2, t_lv1, index)

  def texture_features(self, x01: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """float32 LTE features (lv1, lv2, lv3) of [0, 1] images (also of sr, for the texture loss);
    the search needs them in float32 whatever dtype the LTE computes in."""
    return tuple(f.astype(jnp.float32) for f in self.LTE(x01))
