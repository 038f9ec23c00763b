"""The inference command: super-resolves your own images with a trained TTSR, as the reference's
test mode does, in tiles when they are large.

  python -m ttsr_jax.infer --checkpoint PATH --lr LR.png --ref REF.png [REF2.png ...] --out SR.png
  python -m ttsr_jax.infer --checkpoint PATH --lr LR_DIR --ref REF_DIR --out OUT_DIR
  python -m ttsr_jax.infer --checkpoint PATH --lr LR_DIR --ref REF.png --out OUT_DIR
  python -m ttsr_jax.infer --checkpoint PATH --lr LR.png --ref_pool POOL_DIR --pick K --out SR.png
  python -m ttsr_jax.infer export --checkpoint PATH --out ttsr.npz   (or .pt, with torch)

docs/inference.md describes the commands, the inputs and every error message. The work is done
by `ttsr_jax.predict` (the model), `ttsr_jax.checkpoint` (both checkpoint kinds) and
`ttsr_jax.explain` (the --explain images).
"""

import argparse
import contextlib
import dataclasses
import pathlib
import sys
import time
from typing import Any, Iterator, Optional, Sequence

from absl import logging as absl_logging
import jax
import numpy as np
from PIL import Image

from configs import default
from data_pipeline import files
from data_pipeline.samples import SCALE
from ttsr_jax import checkpoint
from ttsr_jax import compile_cache
from ttsr_jax import demo_model
from ttsr_jax import explain
from ttsr_jax import generators
from ttsr_jax import predict
from ttsr_jax import references
from ttsr_jax import specs
from ttsr_jax import tiling
from ttsr_jax.models.search_transfer import SEARCH_MODES
from ttsr_jax.models.ttsr import TTSR

Params = dict[str, Any]

DEFAULT_SEARCH_MODE = default.get_config().eval.search_mode


class InferError(Exception):
  """A user error: printed as one line, without a traceback."""


def reference_image(paths: Sequence[pathlib.Path]) -> np.ndarray:
  """One reference image from one or several files (several are stitched: `references.stitch`)."""
  return references.stitch([files.read_rgb(p, min_size=predict.MIN_REF_SIDE) for p in paths])


def check_sizes(lr_path: pathlib.Path, lr_shape: Sequence[int], ref_shape: Sequence[int],
                max_pixels: int) -> None:
  """Rejects sizes whose output or (stitched) reference exceeds the `max_pixels` sanity cap."""
  try:
    predict.check_sizes(lr_shape, ref_shape, max_pixels)
  except predict.SizeError as e:
    raise InferError(f"{lr_path}: {e}") from None


@dataclasses.dataclass(frozen=True)
class Job:
  """One LR image, its reference file(s) and where its output goes."""
  lr: pathlib.Path
  refs: tuple[pathlib.Path, ...]
  out: pathlib.Path


def _reference_entries(ref_dir: pathlib.Path) -> dict[str, list[pathlib.Path]]:
  """Reference files and folders of `ref_dir` by name (file stem or folder name)."""
  if not ref_dir.is_dir():
    raise files.MissingDataError(f"{ref_dir}: directory not found, expected a directory of "
                                 "references")
  entries: dict[str, list[pathlib.Path]] = {}
  for entry in sorted(ref_dir.iterdir()):
    if not entry.name.startswith("."):
      entries.setdefault(entry.stem if entry.is_file() else entry.name, []).append(entry)
  if not entries:
    raise files.MissingDataError(f"{ref_dir}: directory is empty, expected at least one reference")
  return entries


def _some(names: Sequence[str], shown: int = 5) -> str:
  more = f" (+{len(names) - shown} more)" if len(names) > shown else ""
  return ", ".join(names[:shown]) + more


def pair_folders(lr_dir: pathlib.Path, ref_dir: pathlib.Path, out_dir: pathlib.Path) -> list[Job]:
  """Pairs LR files with references by name: `LR_DIR/NAME.*` with `REF_DIR/NAME.*` (one
  reference) or with the images in the folder `REF_DIR/NAME/` (several, stitched); the output is
  `OUT_DIR/NAME.png`. Every LR needs a reference and every reference an LR."""
  lrs: dict[str, list[pathlib.Path]] = {}
  for path in files.list_images(lr_dir):
    lrs.setdefault(path.stem, []).append(path)
  refs = _reference_entries(ref_dir)
  for name, paths in [*lrs.items(), *refs.items()]:
    if len(paths) > 1:
      raise InferError(f"{paths[0].parent}: several entries named {name!r} "
                       f"({', '.join(p.name for p in paths)}); keep one")
  no_ref, no_lr = sorted(set(lrs) - set(refs)), sorted(set(refs) - set(lrs))
  if no_ref or no_lr:
    parts = []
    if no_ref:
      parts.append(f"no reference in {ref_dir} for {_some(no_ref)}")
    if no_lr:
      parts.append(f"no LR image in {lr_dir} for {_some(no_lr)}")
    raise InferError(f"unmatched names: {'; '.join(parts)}")
  jobs = []
  for name, (lr,) in lrs.items():
    (ref,) = refs[name]
    ref_paths = tuple(files.list_images(ref)) if ref.is_dir() else (ref,)
    jobs.append(Job(lr, ref_paths, out_dir / f"{name}.png"))
  return jobs


def _jobs(args: argparse.Namespace) -> list[Job]:
  lr, refs, out = args.lr, args.ref or [], args.out
  if lr.is_dir():
    if len(refs) == 1 and refs[0].is_dir():
      return pair_folders(lr, refs[0], out)
    if any(ref.is_dir() for ref in refs):
      raise InferError(f"--lr {lr} is a directory, so --ref must be one directory (references "
                       "paired by name) or reference files (shared by every image)")
    return [Job(path, tuple(refs), out / f"{path.stem}.png") for path in files.list_images(lr)]
  if not lr.exists():
    raise files.MissingDataError(f"{lr}: image file not found")
  if any(ref.is_dir() for ref in refs):
    raise InferError(f"--ref {' '.join(map(str, refs))}: a directory of references needs a "
                     "directory of LR images (--lr DIR)")
  if out.suffix.lower() != ".png":
    raise InferError(f"--out {out}: expected a .png file for a single LR image")
  return [Job(lr, tuple(refs), out)]


def pick_references(jobs: Sequence[Job], pool_dir: pathlib.Path, pick: int,
                    params: Params) -> list[Job]:
  """Gives each job the `pick` photos of `pool_dir` most relevant to its LR image
  (`references.pick`), stitched if several, and prints which they are."""
  pool = files.list_images(pool_dir)
  pool_descriptors = references.describe_files(pool, params)
  picked = []
  for job in jobs:
    chosen = references.pick(files.read_rgb(job.lr, min_size=predict.MIN_LR_SIDE),
                             pool_descriptors, params, pick)
    names = ", ".join(f"{pool[i].name} ({score:.3f})" for i, score in chosen)
    print(f"{job.lr.name}: references {names} of {len(pool)} in {pool_dir}", flush=True)
    picked.append(dataclasses.replace(job, refs=tuple(pool[i] for i, _ in chosen)))
  return picked


def output_paths(out: pathlib.Path, compare: bool, explain_images: bool) -> dict[str, pathlib.Path]:
  """Every file an image writes: 'sr' (OUT), 'compare', 'confidence', 'correspondence'."""
  paths = {"sr": out}
  suffixes = ["compare"] * compare + ["confidence", "correspondence"] * explain_images
  paths.update({k: out.with_name(f"{out.stem}_{k}.png") for k in suffixes})
  return paths


@contextlib.contextmanager
def _all_or_nothing(paths: dict[str, pathlib.Path]) -> Iterator[dict[str, np.ndarray]]:
  """Collects the images to write; writes them (through temporary files, then renamed) only if the
  block finishes, so a failure leaves no partial output behind."""
  images: dict[str, np.ndarray] = {}
  yield images
  temporary = {k: p.with_name(f".{p.name}.partial") for k, p in paths.items()}
  try:
    for key, path in temporary.items():
      path.parent.mkdir(parents=True, exist_ok=True)
      Image.fromarray(images[key]).save(path, format="PNG")
    for key, path in temporary.items():
      path.replace(paths[key])
  finally:
    for path in temporary.values():
      path.unlink(missing_ok=True)


def run(jobs: Sequence[Job], model: TTSR, params: Params, *, compare: bool = False,
        explain_images: bool = False, max_pixels: int = predict.DEFAULT_MAX_PIXELS,
        tile: int = predict.DEFAULT_TILE, halo: int = predict.DEFAULT_HALO) -> None:
  """Super-resolves each job's LR image, writing PNGs and printing a line per image.

  The reference's features are computed once for consecutive jobs with the same reference files.
  Multi-tile images show a progress bar on stderr.
  """
  params = jax.device_put(params)
  reference_key, reference = None, None
  for i, job in enumerate(jobs, 1):
    start = time.perf_counter()
    lr = files.read_rgb(job.lr, min_size=predict.MIN_LR_SIDE)
    ref = reference_image(job.refs)
    check_sizes(job.lr, lr.shape, ref.shape, max_pixels)
    if job.refs != reference_key:
      reference_key, reference = None, None  # frees the previous features first
      reference = predict.reference_features(model, params, ref)
      reference_key = job.refs
    images = predict.prepare_inputs(lr, ref)
    paths = output_paths(job.out, compare, explain_images)
    with _all_or_nothing(paths) as outputs:
      result = predict.super_resolve(model, params, images, reference=reference, tile=tile,
                                     halo=halo, progress=predict.ProgressBar(sys.stderr))
      outputs["sr"] = result.sr
      if compare:
        outputs["compare"] = predict.panels([("bicubic", images["lrsr"]), ("TTSR", result.sr),
                                             ("reference", images["ref"])])
      if explain_images:
        outputs["confidence"] = explain.confidence_image(result.s)
        outputs["correspondence"] = explain.correspondence_image(result.index, result.grid_hw,
                                                                 images["ref"])
    height, width = lr.shape[:2]
    ref_height, ref_width = images["ref"].shape[:2]
    sources = "1 file" if len(job.refs) == 1 else f"{len(job.refs)} files stitched"
    extras = {key: path.name for key, path in paths.items() if key != "sr"}
    if "confidence" in extras:
      low, high = explain.confidence_range(result.s)
      extras["confidence"] += f" (S {low:.3f} to {high:.3f})"
    written = ", ".join([f"{job.out} {result.sr.shape[1]} x {result.sr.shape[0]}",
                         *extras.values()])
    print(f"[{i}/{len(jobs)}] {job.lr.name}: LR {width} x {height}, reference {ref_width} x "
          f"{ref_height} from {sources} -> {written} in {time.perf_counter() - start:.2f} s",
          flush=True)


def _num_res_blocks(text: str) -> tuple[int, ...]:
  """The reference's `16+16+8+4` notation."""
  try:
    blocks = tuple(int(part) for part in text.split("+"))
  except ValueError:
    blocks = ()
  if len(blocks) != 4 or min(blocks) < 0:
    raise argparse.ArgumentTypeError(f"{text!r}: expected four counts such as 16+16+8+4")
  return blocks


def _int_at_least(minimum: int):
  def parse(text: str) -> int:
    value = int(text)
    if value < minimum:
      raise argparse.ArgumentTypeError(f"{text}: expected an integer >= {minimum}")
    return value

  return parse


def _add_checkpoint_flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--checkpoint", type=pathlib.Path, default=demo_model.CHECKPOINT,
                      help="Orbax checkpoint (workdir, workdir/checkpoints or a step directory) "
                      "or reference state dict (.pt/.pth/.npz) (default: the small demo model "
                      "that ships in assets/demo_model)")
  parser.add_argument("--n_feats", type=int, default=None,
                      help="expected n_feats (default: the checkpoint's)")
  parser.add_argument("--num_res_blocks", type=_num_res_blocks, default=None,
                      help="expected residual blocks, e.g. 16+16+8+4 (default: the checkpoint's)")
  parser.add_argument("--res_scale", type=float, default=None,
                      help="residual scale for state dicts, which do not record it (default 1)")


def _architecture_flags(args: argparse.Namespace) -> dict[str, Any]:
  return {"n_feats": args.n_feats, "num_res_blocks": args.num_res_blocks,
          "res_scale": args.res_scale}


def _infer_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m ttsr_jax.infer",
      description="Super-resolves LR images x4 with TTSR and a reference image "
      "('python -m ttsr_jax.infer export -h' for the export command).")
  _add_checkpoint_flags(parser)
  parser.add_argument("--lr", type=pathlib.Path, required=True,
                      help="LR image, or a directory of them")
  references_from = parser.add_mutually_exclusive_group(required=True)
  references_from.add_argument("--ref", type=pathlib.Path, nargs="+",
                               help="reference image(s) (several are stitched), or a directory "
                               "with NAME.* or NAME/ per LR image NAME.*")
  references_from.add_argument("--ref_pool", type=pathlib.Path,
                               help="a directory of candidate references: each LR image uses the "
                               "--pick most relevant of them (stitched if several)")
  parser.add_argument("--pick", type=_int_at_least(1), default=1,
                      help="references picked from --ref_pool per image (default: %(default)s)")
  parser.add_argument("--out", type=pathlib.Path, required=True,
                      help="output .png, or a directory for --lr DIR")
  parser.add_argument("--compare", action="store_true",
                      help="also write OUT_compare.png: bicubic | TTSR | reference")
  parser.add_argument("--search_chunk_size", type=_int_at_least(0),
                      default=predict.DEFAULT_SEARCH_CHUNK_SIZE,
                      help="LR positions per block of the relevance matrix, bounding its memory; "
                      "0 = whole matrix (default: %(default)s)")
  parser.add_argument("--search", choices=SEARCH_MODES, default=DEFAULT_SEARCH_MODE,
                      help="relevance search: 'exact' (the reference's), 'factored' (the same "
                      "scores, 9x fewer operations) or 'coarse' (approximate, coarse-to-fine); "
                      "docs/inference.md (default: %(default)s)")
  parser.add_argument("--max_pixels", type=_int_at_least(1), default=predict.DEFAULT_MAX_PIXELS,
                      help="sanity cap on the output and the reference, in pixels "
                      "(default: %(default)s, 7680x4320)")
  parser.add_argument("--tile", type=_int_at_least(0), default=predict.DEFAULT_TILE,
                      help="largest tile, halo included, in output pixels per side; larger "
                      "outputs are made in tiles, in memory that does not grow with the image; "
                      "0 = never tile (default: %(default)s)")
  halo = parser.add_mutually_exclusive_group()
  halo.add_argument("--halo", type=_int_at_least(0), default=predict.DEFAULT_HALO,
                    help="LR pixels of context around each tile (default: %(default)s, measured "
                    "to keep tiles within one grey level of the whole-image output)")
  halo.add_argument("--exact_halo", action="store_true",
                    help="the halo of the network's whole receptive field: tiles identical to "
                    "the whole-image output (slower: 101 LR pixels for the paper's model)")
  parser.add_argument("--explain", action="store_true",
                      help="also write OUT_confidence.png (the soft attention S) and "
                      "OUT_correspondence.png (where each texture came from in the reference)")
  return parser


def _export_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m ttsr_jax.infer export",
      description="Writes a checkpoint's generator as a reference-layout state dict.")
  _add_checkpoint_flags(parser)
  parser.add_argument("--out", type=pathlib.Path, required=True,
                      help="output .npz, or .pt/.pth (needs torch)")
  return parser


def _halo(args: argparse.Namespace, model: specs.ModelSpec) -> int:
  halo = args.halo
  if args.exact_halo:
    halo = tiling.exact_halo(model.num_res_blocks, model.lte_reduce_lv3)
  if args.tile and args.tile // SCALE <= 2 * halo:
    raise InferError(f"--tile {args.tile}: a tile of {args.tile // SCALE} LR pixels has no room "
                     f"inside its halo of {halo} LR pixels on each side; expected --tile of at "
                     f"least {SCALE * (2 * halo + 1)} (or 0 for no tiling)")
  return halo


def main(argv: Optional[Sequence[str]] = None) -> int:
  """The command line; returns the exit status (0 done, 1 user error, 2 bad flags)."""
  argv = list(sys.argv[1:] if argv is None else argv)
  exporting = bool(argv) and argv[0] == "export"
  args = (_export_parser() if exporting else _infer_parser()).parse_args(argv[exporting:])
  absl_logging.set_verbosity(absl_logging.ERROR)  # Orbax reports every restore at INFO
  compile_cache.enable()
  try:
    if exporting:
      model = generators.export(args.checkpoint, args.out, **_architecture_flags(args))
      note = (f"; pass --res_scale {model.res_scale} when using it" if model.res_scale != 1.0
              else "")
      print(f"wrote {args.out}: {args.checkpoint} as a reference state dict "
            f"({model.describe()}){note}")
      return 0
    jobs = _jobs(args)
    params, model = generators.load(args.checkpoint, **_architecture_flags(args))
    module = model.build(search_chunk_size=args.search_chunk_size, search_mode=args.search)
    if args.ref_pool is not None:
      jobs = pick_references(jobs, args.ref_pool, args.pick, params)
    run(jobs, module, params, compare=args.compare, explain_images=args.explain,
        max_pixels=args.max_pixels, tile=args.tile, halo=_halo(args, model))
  except (InferError, checkpoint.CheckpointError, files.DatasetError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
