"""Evaluation on the test sets (reference `Trainer.evaluate`, extended to the paper's Table 1):
PSNR/SSIM per set and protocol, the bicubic baseline under the same metric, sample image grids,
and the combined results table.

Protocols, named by their result keys: CUFED5 'level1' .. 'level5' (one reference of that
similarity level; the reference's evaluation is 'level1') and 'multi_reference' (the five
references stitched); 'sun80', 'urban100', 'manga109', 'wrsr' (one reference each, chosen as
the `specs.EvalSpec` says; docs/data.md, "Test sets").

Test images keep their own sizes (batch 1), so the model is compiled once per input shape; the
compiled functions live as long as the `Evaluator` (and, with `ttsr_jax.compile_cache` on, on
disk for later runs). With several processes, image i is evaluated by process i % process_count
and the scores are gathered, so every process returns the same numbers.
"""

import dataclasses
import itertools
import pathlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Optional

import jax
import numpy as np
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp
import tqdm

from data_pipeline import cufed5
from data_pipeline import files
from data_pipeline import samples
from data_pipeline import testsets
from ttsr_jax import metrics as metrics_lib
from ttsr_jax import predict
from ttsr_jax import specs

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


SET_TITLES = {"cufed5": "CUFED5", "sun80": "Sun80", "urban100": "Urban100",
              "manga109": "Manga109", "wrsr": "WR-SR"}


@dataclasses.dataclass(frozen=True)
class Protocol:
  """A test set with its choice of references; `open()` lists the files at once and returns the
  number of images and the (image name, batch) iterator that reads them; `image_files()` lists
  every image file the protocol reads."""
  name: str  # the result keys' prefix
  open: Callable[[], tuple[int, Iterator[tuple[str, Batch]]]]
  image_files: Callable[[], list[pathlib.Path]]


def protocol_set(name: str) -> str:
  """The test set of a protocol name ('level2' -> 'cufed5')."""
  if name == MULTI_REFERENCE or (name.startswith("level") and name[len("level"):].isdigit()):
    return "cufed5"
  return name


def describe_reference(name: str, settings: Mapping[str, Any]) -> str:
  """What served as the reference under protocol `name`, given the `config.eval` values."""
  seed = settings.get("reference_seed", 0)
  if name == MULTI_REFERENCE:
    return "its five references stitched (2500 x 500)"
  if protocol_set(name) == "cufed5":
    return f"its level-{name[len('level'):]} reference"
  return {
      "sun80": {"random": f"one of its web references, drawn (seed {seed})",
                "first": "its first web reference by name"}.get(settings.get("sun80_reference")),
      "urban100": "its own LR image",
      "manga109": {"random_hr": f"another image of the set, drawn (seed {seed})",
                   "lr": "its own LR image"}.get(settings.get("manga109_reference")),
      "wrsr": "its paired reference",
  }.get(name) or "—"


def describe_metric(settings: Mapping[str, Any]) -> str:
  """The metric protocol of the `config.eval` values in words."""
  if settings.get("protocol") == "mmagic":
    crop = settings.get("crop_border")
    return (f"'mmagic': {'Y channel' if settings.get('y_channel') else 'RGB'}, "
            f"{4 if crop is None else crop} pixels shaved per side")
  return "'ttsr': Y channel, no border shaved (the reference's utils.py)"


def results_table(record: Mapping[str, Any]) -> list[str]:
  """The combined table (set x protocol, PSNR/SSIM, bicubic beside) as markdown lines.

  Args:
    record: an evaluation record as `evaluate_record` makes it (eval_<step>.json): the results
      ('sun80/psnr', ...), the `config.eval` values under 'eval' and the images scored per
      protocol under 'images' (shown as '—' in records written before it was recorded).
  """
  settings, counts = record.get("eval", {}), record.get("images", {})
  names = [key[:-len("/psnr")] for key in record if key.endswith("/psnr")]
  rows = [[SET_TITLES.get(protocol_set(name), name), name, str(counts.get(name, "—")),
           describe_reference(name, settings),
           *(f"{record[f'{name}/{score}']:.{4 if score.endswith('ssim') else 3}f}"
             for score in SCORES)] for name in names]
  sizes = ("cropped at the bottom and right" if settings.get("sizes", "crop") == "crop" else
           "edge-padded for the model, scored whole")
  header = ["set", "protocol", "images", "reference", "PSNR", "SSIM", "bicubic PSNR",
            "bicubic SSIM"]
  return [f"Metric {describe_metric(settings)}; sides not multiples of 4 {sizes} (CUFED5: "
          "cropped, as the reference). Bicubic: the bicubic-upsampled LR input, same metric.", "",
          "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
          *("| " + " | ".join(row) + " |" for row in rows)]


def evaluate_record(spec: specs.EvalSpec, results: Mapping[str, float],
                    images: Mapping[str, int], **extra: Any) -> dict[str, Any]:
  """What eval_<step>.json holds: `extra` (checkpoint, step), the metric protocol, the
  `config.eval` values under 'eval', the images scored per protocol (`Evaluator.images`) and the
  results."""
  return {**extra, "protocol": spec.protocol, "eval": spec.settings(), "images": dict(images),
          **results}


class Evaluator:
  """Evaluates generator parameters of `model` on the test sets and protocols `spec` names
  (checked by `specs.eval_spec`)."""

  def __init__(self, model: specs.ModelSpec, spec: specs.EvalSpec):
    self.spec = spec
    self._protocols = self._make_protocols()
    # The metric that ranks checkpoints: the PSNR of the first protocol.
    self.primary_metric = f"{self._protocols[0].name}/psnr"
    # The search's chunking bounds its memory on large test images and does not change sr.
    self._sr = predict.sr_function(model.build(search_chunk_size=spec.search_chunk_size,
                                               search_mode=spec.search_mode))
    self._baseline: dict[tuple[str, str], tuple[float, float]] = {}
    self._evaluations = 0  # makes the barrier names unique
    self._compiled_shapes: set[tuple[tuple[int, ...], ...]] = set()
    # Images scored per protocol by the last call.
    self.images: dict[str, int] = {}

  def _make_protocols(self) -> list[Protocol]:
    e, cufed_dir = self.spec, self.spec.cufed_dir

    def cufed(samples_fn: Callable[[], Iterator[tuple[str, Batch]]]):
      return lambda: (len(files.cufed5_groups(cufed_dir)), samples_fn())

    def cufed_files(levels: Sequence[int]):
      return lambda: [path for group in files.cufed5_groups(cufed_dir)
                      for path in (group.hr, *(group.refs[level - 1] for level in levels))]

    def listed(pairs_fn: Callable[[], list[testsets.Pair]]):
      def open_set():
        pairs = pairs_fn()
        return len(pairs), testsets.batches(pairs, e.sizes)
      return open_set

    def listed_files(pairs_fn: Callable[[], list[testsets.Pair]]):
      return lambda: [path for pair in pairs_fn() for path in (pair.hr, pair.ref) if path]

    readers = {
        "sun80": lambda: testsets.sun80_pairs(e.test_dir, e.sun80_reference, e.reference_seed),
        "urban100": lambda: testsets.urban100_pairs(e.test_dir),
        "manga109": lambda: testsets.manga109_pairs(e.test_dir, e.manga109_reference,
                                                    e.reference_seed),
        "wrsr": lambda: testsets.wrsr_pairs(e.test_dir),
    }
    protocols = []
    for test_set in e.sets:
      if test_set != "cufed5":
        protocols.append(Protocol(test_set, listed(readers[test_set]),
                                  listed_files(readers[test_set])))
        continue
      protocols += [Protocol(f"level{level}",
                             cufed(lambda level=level: cufed5.level_samples(cufed_dir, level)),
                             cufed_files([level]))
                    for level in e.levels]
      if e.multi_reference:
        protocols.append(Protocol(MULTI_REFERENCE,
                                  cufed(lambda: cufed5.multi_reference_samples(cufed_dir)),
                                  cufed_files(range(1, files.NUM_LEVELS + 1))))
    return protocols

  def protocols(self) -> list[Protocol]:
    """The protocols in evaluation order."""
    return list(self._protocols)

  def check_data(self) -> None:
    """Lists every protocol's files (reads no image), so a layout error stops a run at once.

    Raises:
      files.DatasetError: a missing directory, image or reference, naming the path.
    """
    for protocol in self._protocols:
      protocol.open()

  def missing_sets(self) -> dict[str, str]:
    """The test sets with missing files (an absent folder, image or reference), each with the
    first such problem found; the others pass `check_data`."""
    missing = {}
    for protocol in self._protocols:
      test_set = protocol_set(protocol.name)
      if test_set not in missing:
        try:
          protocol.open()
        except files.MissingDataError as e:
          missing[test_set] = str(e)
    return missing

  def check_images(self, progress: bool = False) -> tuple[int, list[str]]:
    """Decodes every image file the protocols read, so that a bad file stops a run before the
    first model call rather than after some sets were scored.

    Returns:
      The number of files checked, and one line per file that cannot be used (path and reason,
      as `files.read_rgb` says it).
    """
    paths = list(dict.fromkeys(path for protocol in self._protocols
                               for path in protocol.image_files()))
    problems = []
    for path in tqdm.tqdm(paths, unit="image", desc="decode check", disable=not progress):
      try:
        files.read_rgb(path, min_size=samples.SCALE)
      except files.DatasetError as e:
        problems.append(str(e))
    return len(paths), problems

  def __call__(self, g_params: Params,
               on_protocol: Optional[Callable[[dict[str, float]], None]] = None,
               ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Mean scores ('level1/psnr', 'sun80/bicubic_ssim', ...) and image grids by name.

    Args:
      g_params: generator parameters, possibly replicated over any mesh; each process evaluates
        with its first copy.
      on_protocol: called with the results so far after each protocol, so that a caller can
        keep what was scored before a later protocol fails or is interrupted.
    """
    params = jax.tree_util.tree_map(lambda x: x.addressable_data(0), g_params)
    self._evaluations += 1
    self.images = {}
    results, grids = {}, {}
    for protocol in self._protocols:
      scores = self._scores(protocol, params, grids)
      results.update({f"{protocol.name}/{key}": float(np.mean(scores[:, i]))
                      for i, key in enumerate(SCORES)})
      self.images[protocol.name] = len(scores)
      if on_protocol is not None:
        on_protocol(dict(results))
    return results, grids

  def _metric(self, sr: np.ndarray, hr: np.ndarray) -> tuple[float, float]:
    e = self.spec
    if e.protocol == "ttsr":
      return metrics_lib.calc_psnr_and_ssim(sr, hr, "ttsr")
    return metrics_lib.calc_psnr_and_ssim(sr, hr, "mmagic", crop_border=e.crop_border,
                                          y_channel=e.y_channel)

  def _scores(self, protocol: Protocol, params: Params,
              grids: dict[str, np.ndarray]) -> np.ndarray:
    """(images, len(SCORES)) per-image scores of one protocol, the same on every process."""
    e = self.spec
    count, index = jax.process_count(), jax.process_index()
    total, batches = protocol.open()
    total = min(total, e.num_images) if e.num_images else total
    progress = tqdm.tqdm(itertools.islice(batches, total), total=total, unit="image",
                         desc=f"eval {protocol.name}", disable=index > 0)
    rows = []
    for i, (image, batch) in enumerate(progress):
      if i % count != index:
        rows.append(np.full(len(SCORES), np.nan))
        continue
      inputs = [batch[k] for k in samples.MODEL_INPUT_KEYS]
      shapes = (inputs[0].shape, inputs[2].shape)
      if shapes not in self._compiled_shapes:
        # Each new size compiles the model (seconds on a CPU); say so rather than look stuck.
        progress.set_postfix_str(f"new size LR {shapes[0][2]} x {shapes[0][1]}, ref "
                                 f"{shapes[1][2]} x {shapes[1][1]}: compiling")
        self._compiled_shapes.add(shapes)
      sr = np.asarray(self._sr(params, *inputs))
      progress.set_postfix_str(f"{len(self._compiled_shapes)} sizes compiled")
      # Inputs padded to multiples of 4 ('pad' sizes) give outputs larger than the target.
      height, width = batch["hr"].shape[1:3]
      sr = sr[:, :height, :width]
      batch = {**batch, "lrsr": batch["lrsr"][:, :height, :width]}
      if (protocol.name, image) not in self._baseline:
        self._baseline[protocol.name, image] = self._metric(batch["lrsr"], batch["hr"])
      rows.append([*self._metric(sr, batch["hr"]), *self._baseline[protocol.name, image]])
      if i < e.num_image_grids:
        grids[f"{protocol.name}/{image}"] = image_grid(batch, sr)
    scores = np.asarray(rows, np.float64)
    if count > 1:
      sync_processes(f"ttsr_eval_{protocol.name}_{self._evaluations}")
      gathered = multihost_utils.process_allgather(scores)  # (processes, images, scores)
      scores = gathered[np.arange(len(rows)) % count, np.arange(len(rows))]
    return scores
