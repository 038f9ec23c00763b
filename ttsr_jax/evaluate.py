"""CUFED5 evaluation (reference `Trainer.evaluate`): PSNR/SSIM per reference level, the paper's
five-reference protocol, the bicubic baseline under the same metric, and sample image grids.

Test images keep their own sizes (batch 1), so the model is compiled once per input shape; the
compiled functions live as long as the `Evaluator`. With several processes, image i is evaluated
by process i % process_count and the scores are gathered, so every process returns the same
numbers.
"""

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp

from data_pipeline import cufed5
from ttsr_jax import metrics as metrics_lib
from ttsr_jax import predict
from ttsr_jax import step as step_lib

Params = Any
Batch = dict[str, np.ndarray]
SCORES = ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim")
_BARRIER_TIMEOUT_MS = 3600 * 1000
MULTI_REFERENCE = "multi_reference"


def sync_processes(name: str) -> None:
  """Waits until every process has called this with the same (unique) `name`; no-op with one.

  A barrier of JAX's coordination service, which waits for an hour. CPU device collectives
  (gloo) fail when a process reaches one more than 30 s after the others, so processes that may
  have drifted apart (compiling, evaluating different images) meet here first.
  """
  ocp.multihost.get_barrier_sync_fn()(key=name, timeout_ms=_BARRIER_TIMEOUT_MS)


def image_grid(batch: Batch, sr: np.ndarray) -> np.ndarray:
  """bicubic | reference | TTSR | ground truth, captioned, as one uint8 row (`predict.panels`;
  the reference is resized to the row's height)."""
  lrsr, ref, out, hr = (predict.to_uint8(x[0]) for x in (batch["lrsr"], batch["ref"], sr,
                                                           batch["hr"]))
  return predict.panels([("bicubic", lrsr), ("reference", ref), ("TTSR", out),
                         ("ground truth", hr)])


class Evaluator:
  """Evaluates generator parameters on CUFED5 as `config.eval` says.

  Protocols are named 'level1' .. 'level5' (one reference of that similarity level; the
  reference's evaluation is 'level1') and 'multi_reference' (the five references stitched).
  """

  def __init__(self, config: ml_collections.ConfigDict):
    e = config.eval
    for level in e.levels:
      if not 1 <= level <= 5:
        raise ValueError(f"config.eval.levels: level {level} is not in 1..5")
    if e.protocol not in metrics_lib.PROTOCOLS:
      raise ValueError(f"config.eval.protocol {e.protocol!r}: expected one of "
                       f"{metrics_lib.PROTOCOLS}")
    self._config = config
    if not self.protocols():
      raise ValueError("config.eval: no protocol to evaluate; set levels or multi_reference")
    # The metric that ranks checkpoints: the PSNR of the first protocol.
    self.primary_metric = f"{self.protocols()[0][0]}/psnr"
    # The search's chunking bounds its memory on large test images and does not change sr.
    model = step_lib.build_model(config.model).clone(search_chunk_size=e.search_chunk_size)
    self._sr = predict.sr_function(model)
    self._baseline: dict[tuple[str, str], tuple[float, float]] = {}
    self._evaluations = 0  # makes the barrier names unique

  def protocols(self) -> list[tuple[str, Callable[[], Iterator[tuple[str, Batch]]]]]:
    """(name, function returning the (image name, batch) iterator) of each protocol."""
    cufed_dir = self._config.data.cufed_dir
    protocols = [(f"level{level}", lambda level=level: cufed5.level_samples(cufed_dir, level))
                 for level in self._config.eval.levels]
    if self._config.eval.multi_reference:
      protocols.append((MULTI_REFERENCE, lambda: cufed5.multi_reference_samples(cufed_dir)))
    return protocols

  def __call__(self, g_params: Params) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Mean scores ('level1/psnr', 'level1/bicubic_ssim', ...) and image grids by name.

    `g_params` may be replicated over any mesh; each process evaluates with its first copy.
    """
    params = jax.tree_util.tree_map(lambda x: x.addressable_data(0), g_params)
    self._evaluations += 1
    results, grids = {}, {}
    for name, make_samples in self.protocols():
      scores = self._scores(name, make_samples(), params, grids)
      results.update({f"{name}/{key}": float(np.mean(scores[:, i]))
                      for i, key in enumerate(SCORES)})
    return results, grids

  def _scores(self, name: str, batches: Iterator[tuple[str, Batch]], params: Params,
              grids: dict[str, np.ndarray]) -> np.ndarray:
    """(images, len(SCORES)) per-image scores of one protocol, the same on every process."""
    e = self._config.eval
    count, index = jax.process_count(), jax.process_index()
    rows = []
    for i, (image, batch) in enumerate(itertools.islice(batches, e.num_images or None)):
      if i % count != index:
        rows.append(np.full(len(SCORES), np.nan))
        continue
      sr = np.asarray(self._sr(params, *(batch[k] for k in ("lr", "lrsr", "ref", "refsr"))))
      if (name, image) not in self._baseline:
        self._baseline[name, image] = metrics_lib.calc_psnr_and_ssim(batch["lrsr"], batch["hr"],
                                                                     e.protocol)
      rows.append([*metrics_lib.calc_psnr_and_ssim(sr, batch["hr"], e.protocol),
                   *self._baseline[name, image]])
      if i < e.num_image_grids:
        grids[f"{name}/{image}"] = image_grid(batch, sr)
    if not rows:
      raise ValueError(f"{self._config.data.cufed_dir}: no CUFED5 test images to evaluate")
    scores = np.asarray(rows, np.float64)
    if count > 1:
      sync_processes(f"ttsr_eval_{name}_{self._evaluations}")
      gathered = multihost_utils.process_allgather(scores)  # (processes, images, scores)
      scores = gathered[np.arange(len(rows)) % count, np.arange(len(rows))]
    return scores
