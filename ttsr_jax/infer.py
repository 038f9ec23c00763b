"""Super-resolves your own images with a trained TTSR, as the reference's test mode does.

  python -m ttsr_jax.infer --checkpoint PATH --lr LR.png --ref REF.png [REF2.png ...] --out SR.png
  python -m ttsr_jax.infer --checkpoint PATH --lr LR_DIR --ref REF_DIR --out OUT_DIR
  python -m ttsr_jax.infer export --checkpoint PATH --out ttsr.npz   (or .pt, with torch)

docs/inference.md describes the commands, the inputs and every error message.

Checkpoint kinds (`--checkpoint PATH`), told apart by what is on disk:
  * a file: a reference state dict, `.pt`/`.pth` (`TTSR.pt`, `TTSR-rec.pt` as released; needs
    torch) or `.npz` of the same keys. The architecture comes from its keys
    (`convert.infer_model_config`); res_scale, which a state dict does not record, from
    `--res_scale` (default 1, the reference's).
  * a directory: an Orbax checkpoint of our training loop. The layout this module assumes (the
    contract with ttsr_jax/train.py):

      WORKDIR/checkpoints/<step>/state    ocp.args.StandardSave(step.TrainState); only its
                                          `g_params` entry is read (partial restore)
      WORKDIR/checkpoints/<step>/config   ocp.args.JsonSave(config.to_dict()): the experiment
                                          config; its "model" entry is configs/default.py's
                                          config.model (n_feats, num_res_blocks, res_scale, ...)

    i.e. what `ocp.CheckpointManager(WORKDIR / "checkpoints").save(step,
    args=ocp.args.Composite(state=..., config=...))` writes with default step names. PATH may be
    WORKDIR or WORKDIR/checkpoints (the latest step is used) or one step directory.
"""

import os

# Nothing here needs TensorFlow; should a dependency import it, keep its C++ logs quiet.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse
import dataclasses
import functools
import importlib.util
import pathlib
import sys
import time
from typing import Any, Optional, Sequence, Union

from absl import logging as absl_logging
import flax
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from PIL import Image

from data_pipeline import files
from data_pipeline import samples
from ttsr_jax import convert
from ttsr_jax import step
from ttsr_jax.models.ttsr import TTSR

Params = dict[str, Any]
PathLike = Union[str, os.PathLike]

SCALE = samples.SCALE
# Architecture fields of a model config; the rest (precision, remat, ...) change only rounding.
ARCHITECTURE_KEYS = ("n_feats", "num_res_blocks", "res_scale", "lte_reduce_lv3")
STATE_DICT_SUFFIXES = (".npz", ".pt", ".pth")
# A reference must hold at least one whole 3x3 patch of its lv3 (1/4 resolution) feature grid.
MIN_REF_SIDE = 3 * SCALE
# Default cap on output and reference pixels (Full HD). With the default model on a 2-core CPU a
# 1280x720 output and a same-size reference take about 2 minutes and peak at 6.6 GB, and the
# search grows with the product of the two sizes (docs/inference.md); beyond, use --max_pixels.
DEFAULT_MAX_PIXELS = 1920 * 1080
DEFAULT_SEARCH_CHUNK_SIZE = 4096
_COMPARE_GAP = 8  # white pixels between the panels of --compare images


class InferError(Exception):
  """A user error: printed as one line, without a traceback."""


def abstract_generator_params(model_config: dict[str, Any]) -> Params:
  """Shapes and dtypes of the generator parameters for TTSR constructor arguments."""
  return convert.abstract_params(TTSR(**model_config), *step.example_inputs())


def _load_state_dict_params(path: pathlib.Path,
                            flags: dict[str, Any]) -> tuple[Params, dict[str, Any]]:
  try:
    state_dict = convert.load_state_dict(path)
  except ImportError as e:
    raise InferError(str(e)) from None
  except (OSError, ValueError) as e:  # a damaged archive, a pickle inside an .npz
    raise InferError(f"{path}: not a readable state dict ({' '.join(str(e).split())})") from None
  try:
    model_config = _merge_flags(path, convert.infer_model_config(state_dict), flags)
    params = convert.import_state_dict(state_dict, abstract_generator_params(model_config))
  except convert.StateDictError as e:
    raise InferError(f"{path}: {e}") from None
  return params, model_config


def _orbax_location(path: pathlib.Path) -> tuple[pathlib.Path, Optional[int]]:
  """(CheckpointManager directory, step or None for the latest) for a workdir/checkpoints/step."""
  path = path.absolute()  # Orbax refuses relative paths
  if (path / "checkpoints").is_dir():
    return path / "checkpoints", None
  if (path / "state").is_dir():
    if not path.name.isdigit():
      raise InferError(f"{path}: a step directory must be named after its step number")
    return path.parent, int(path.name)
  return path, None


def _restore_orbax(path: pathlib.Path, flags: dict[str, Any]) -> tuple[Params, dict[str, Any]]:
  directory, step = _orbax_location(path)
  options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
  with ocp.CheckpointManager(directory, options=options) as manager:
    step = manager.latest_step() if step is None else step
    if step is None or not (directory / str(step) / "config").is_dir():
      raise InferError(f"{path}: no checkpoint found; expected WORKDIR/checkpoints/<step>/"
                       "{state,config} from training, or a reference state dict file "
                       f"({', '.join(STATE_DICT_SUFFIXES)})")
    config = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
    stored = config.get("model") if isinstance(config, dict) else None
    if not isinstance(stored, dict) or any(k not in stored for k in ARCHITECTURE_KEYS):
      raise InferError(f"{directory / str(step) / 'config'}: no model config with "
                       f"{', '.join(ARCHITECTURE_KEYS)} under 'model'")
    model_config = {k: stored[k] for k in ARCHITECTURE_KEYS}
    model_config["num_res_blocks"] = tuple(model_config["num_res_blocks"])
    model_config = _merge_flags(path, model_config, flags)
    target = abstract_generator_params(model_config)
    try:
      restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
          item={"g_params": target},
          restore_args=ocp.checkpoint_utils.construct_restore_args({"g_params": target}),
          partial_restore=True)))
    except (ValueError, KeyError, FileNotFoundError) as e:
      first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      raise InferError(f"{directory / str(step)}: cannot restore state/g_params "
                       f"({first_line})") from None
  params = restored["state"]["g_params"]
  _check_shapes(directory / str(step), params, target, model_config)
  return params, model_config


def _check_shapes(where: pathlib.Path, params: Params, target: Params,
                  model_config: dict[str, Any]) -> None:
  # NumPy restores take the stored shapes whatever the target says, so a config that does not
  # describe the stored parameters would only fail deep inside the model.
  flat_target = flax.traverse_util.flatten_dict(target)
  for path, value in flax.traverse_util.flatten_dict(params).items():
    want = flat_target[path].shape
    if value.shape != want:
      raise InferError(f"{where}: g_params/{'/'.join(path)} has shape {value.shape}, but the model "
                       f"config stored with it ({_describe(model_config)}) needs {want}")


def _merge_flags(path: pathlib.Path, model_config: dict[str, Any],
                 flags: dict[str, Any]) -> dict[str, Any]:
  """Adds architecture flags the checkpoint does not record; rejects those it contradicts."""
  for key, value in flags.items():
    if value is not None and key in model_config and model_config[key] != value:
      raise InferError(f"{path}: the checkpoint has {key}={_format(model_config[key])}, "
                       f"--{key} asks for {_format(value)} (a checkpoint of another model)")
  return {**{k: v for k, v in flags.items() if v is not None}, **model_config}


def _format(value: Any) -> str:
  return "+".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _describe(model_config: dict[str, Any]) -> str:
  return ", ".join(f"{k} {_format(v)}" for k, v in model_config.items())


def load_checkpoint_params(path: PathLike, **flags: Any) -> tuple[Params, dict[str, Any]]:
  """Reads generator parameters and their model config from a checkpoint of either kind.

  Args:
    path: a reference state dict file (.pt/.pth/.npz) or an Orbax checkpoint (workdir,
      workdir/checkpoints or a step directory; layout in the module docstring).
    **flags: architecture values the caller expects (keys of ARCHITECTURE_KEYS, None = any): those
      the checkpoint records must agree, the others are added to the returned config.

  Returns:
    ({'LTE': ..., 'MainNet': ...} as NumPy arrays, TTSR constructor arguments).

  Raises:
    InferError: no such checkpoint, an unreadable one, or one of another model.
  """
  path = pathlib.Path(path)
  if path.is_dir():
    return _restore_orbax(path, flags)
  if not path.is_file():
    raise InferError(f"{path}: checkpoint not found")
  if path.suffix not in STATE_DICT_SUFFIXES:
    raise InferError(f"{path}: unknown checkpoint kind; expected an Orbax checkpoint directory "
                     f"or a reference state dict ({', '.join(STATE_DICT_SUFFIXES)})")
  return _load_state_dict_params(path, flags)


def export_checkpoint(path: PathLike, out: PathLike, **flags: Any) -> dict[str, Any]:
  """Writes a checkpoint's generator as a reference-layout state dict (.npz, or .pt with torch).

  Returns the model config; res_scale is not part of a state dict, so a value other than 1 has to
  be passed again (`--res_scale`) when the export is used.
  """
  out = pathlib.Path(out)
  if out.suffix not in STATE_DICT_SUFFIXES:
    raise InferError(f"{out}: unknown export format; expected {', '.join(STATE_DICT_SUFFIXES)}")
  # Checked before the checkpoint is read, which can take a while.
  if out.suffix != ".npz" and importlib.util.find_spec("torch") is None:
    raise InferError(f"{out}: writing PyTorch files needs torch (pip install torch); "
                     "export to .npz instead")
  params, model_config = load_checkpoint_params(path, **flags)
  state_dict = convert.export_state_dict(params, vgg_prefix="LTE")
  out.parent.mkdir(parents=True, exist_ok=True)
  if out.suffix == ".npz":
    with open(out, "wb") as f:  # np.savez on a name would append '.npz' to other suffixes
      np.savez(f, **state_dict)
  else:
    import torch  # pylint: disable=g-import-not-at-top
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state_dict.items()}, out)
  return model_config


def prepare_inputs(lr: np.ndarray, ref: np.ndarray) -> dict[str, np.ndarray]:
  """The reference test mode's uint8 model inputs (TTSR_SPEC 5.3) from uint8 RGB images.

  `lr` is kept as given, `lrsr` is its x4 Pillow bicubic, `ref` is cropped at the top-left to
  multiples of 4 and `refsr` is its x1/4-then-x4 bicubic.
  """
  height, width = lr.shape[:2]
  ref = samples.crop_to_multiple(ref)
  return {"lr": lr, "lrsr": samples.resize_bicubic(lr, SCALE * height, SCALE * width),
          "ref": ref, "refsr": samples.down_up(ref)[1]}


@functools.cache
def sr_function(model: TTSR):
  """jit of (params, lr, lrsr, ref, refsr) -> sr, one per model, compiled once per input shape.

  Parameters are an argument, not constants baked into the program (which XLA would fold slowly).
  """
  return jax.jit(lambda params, *images: model.apply({"params": params}, *images).sr)


def to_uint8(sr: np.ndarray) -> np.ndarray:
  """The reference's saved image: round((sr + 1) * 127.5) in float32, half to even, as uint8."""
  return np.round((np.asarray(sr, np.float32) + np.float32(1)) * np.float32(127.5)).astype(np.uint8)


def super_resolve(model: TTSR, params: Params, images: dict[str, np.ndarray]) -> np.ndarray:
  """uint8 (4H, 4W, 3) output for `prepare_inputs` (jit-compiled once per input shape)."""
  inputs = [samples.normalize(images[k])[None] for k in ("lr", "lrsr", "ref", "refsr")]
  return to_uint8(sr_function(model)(params, *inputs)[0])


def side_by_side(lrsr: np.ndarray, sr: np.ndarray, ref: np.ndarray) -> np.ndarray:
  """bicubic | TTSR | reference (bicubic-resized to the same height), separated by white gaps."""
  height = sr.shape[0]
  ref_height, ref_width = ref.shape[:2]
  ref_resized = samples.resize_bicubic(ref, height, max(1, round(ref_width * height / ref_height)))
  gap = np.full((height, _COMPARE_GAP, 3), 255, np.uint8)
  return np.concatenate([lrsr, gap, sr, gap, ref_resized], axis=1)


def reference_image(paths: Sequence[pathlib.Path]) -> np.ndarray:
  """One reference image from one or several files.

  Several references are combined as in the paper's multi-reference protocol
  (`samples.stitch_references`): stacked vertically, each at the top-left of a black square tile,
  the CUFED5 protocol's 500 pixels or the longest side (rounded up to a multiple of 4) if larger,
  so no reference is cropped.
  """
  refs = [files.read_rgb(p, min_size=MIN_REF_SIDE) for p in paths]
  if len(refs) == 1:
    return refs[0]
  longest = max(max(r.shape[:2]) for r in refs)
  tile = max(samples.MULTI_REFERENCE_TILE, -(-longest // SCALE) * SCALE)
  return samples.stitch_references(refs, tile)


def check_sizes(lr_path: pathlib.Path, lr_shape: Sequence[int], ref_shape: Sequence[int],
                max_pixels: int) -> None:
  """Rejects sizes whose output or (stitched) reference exceeds `max_pixels`."""
  height, width = lr_shape[:2]
  out_pixels = SCALE * height * SCALE * width
  if out_pixels > max_pixels:
    raise InferError(f"{lr_path}: LR of {height}x{width} gives a {SCALE * height}x{SCALE * width} "
                     f"output ({out_pixels:,} pixels), above --max_pixels {max_pixels:,}; "
                     "downscale or tile the LR image, or raise --max_pixels if memory allows")
  ref_height, ref_width = ref_shape[:2]
  if ref_height * ref_width > max_pixels:
    raise InferError(f"{lr_path}: its reference is {ref_height}x{ref_width} "
                     f"({ref_height * ref_width:,} pixels), above --max_pixels {max_pixels:,}; "
                     "downscale the reference, or raise --max_pixels if memory allows")


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
  lr, refs, out = args.lr, args.ref, args.out
  if lr.is_dir():
    if len(refs) != 1 or not refs[0].is_dir():
      raise InferError(f"--lr {lr} is a directory, so --ref must be one directory (references "
                       "paired by name)")
    return pair_folders(lr, refs[0], out)
  if not lr.exists():
    raise files.MissingDataError(f"{lr}: image file not found")
  if any(ref.is_dir() for ref in refs):
    raise InferError(f"--ref {' '.join(map(str, refs))}: a directory of references needs a "
                     "directory of LR images (--lr DIR)")
  if out.suffix.lower() != ".png":
    raise InferError(f"--out {out}: expected a .png file for a single LR image")
  return [Job(lr, tuple(refs), out)]


def _compare_path(out: pathlib.Path) -> pathlib.Path:
  return out.with_name(f"{out.stem}_compare.png")


def run(jobs: Sequence[Job], model: TTSR, params: Params, *, compare: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
  """Super-resolves each job's LR image, writing PNGs and printing a line per image."""
  params = jax.device_put(params)
  for i, job in enumerate(jobs, 1):
    start = time.perf_counter()
    lr = files.read_rgb(job.lr)
    ref = reference_image(job.refs)
    check_sizes(job.lr, lr.shape, ref.shape, max_pixels)
    images = prepare_inputs(lr, ref)
    sr = super_resolve(model, params, images)
    job.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sr).save(job.out)
    if compare:
      Image.fromarray(side_by_side(images["lrsr"], sr, images["ref"])).save(_compare_path(job.out))
    height, width = lr.shape[:2]
    ref_height, ref_width = images["ref"].shape[:2]
    print(f"[{i}/{len(jobs)}] {job.lr.name}: LR {height}x{width}, ref {ref_height}x{ref_width} "
          f"({len(job.refs)} file{'s' * (len(job.refs) > 1)}) -> {job.out} "
          f"{sr.shape[0]}x{sr.shape[1]} in {time.perf_counter() - start:.2f} s", flush=True)


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
  parser.add_argument("--checkpoint", type=pathlib.Path, required=True,
                      help="Orbax checkpoint (workdir, workdir/checkpoints or a step directory) "
                      "or reference state dict (.pt/.pth/.npz)")
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
  parser.add_argument("--ref", type=pathlib.Path, nargs="+", required=True,
                      help="reference image(s) (several are stitched), or a directory with "
                      "NAME.* or NAME/ per LR image NAME.*")
  parser.add_argument("--out", type=pathlib.Path, required=True,
                      help="output .png, or a directory for --lr DIR")
  parser.add_argument("--compare", action="store_true",
                      help="also write OUT_compare.png: bicubic | TTSR | reference")
  parser.add_argument("--search_chunk_size", type=_int_at_least(0),
                      default=DEFAULT_SEARCH_CHUNK_SIZE,
                      help="LR positions per block of the relevance matrix, bounding its memory; "
                      "0 = whole matrix (default: %(default)s)")
  parser.add_argument("--max_pixels", type=_int_at_least(1), default=DEFAULT_MAX_PIXELS,
                      help="largest output and reference, in pixels (default: %(default)s)")
  return parser


def _export_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m ttsr_jax.infer export",
      description="Writes a checkpoint's generator as a reference-layout state dict.")
  _add_checkpoint_flags(parser)
  parser.add_argument("--out", type=pathlib.Path, required=True,
                      help="output .npz, or .pt/.pth (needs torch)")
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  """The command line; returns the exit status (0 done, 1 user error, 2 bad flags)."""
  argv = list(sys.argv[1:] if argv is None else argv)
  exporting = bool(argv) and argv[0] == "export"
  args = (_export_parser() if exporting else _infer_parser()).parse_args(argv[exporting:])
  absl_logging.set_verbosity(absl_logging.ERROR)  # Orbax reports every restore at INFO
  try:
    if exporting:
      model_config = export_checkpoint(args.checkpoint, args.out, **_architecture_flags(args))
      res_scale = model_config.get("res_scale", 1.0)
      note = f"; pass --res_scale {res_scale} when using it" if res_scale != 1.0 else ""
      print(f"wrote {args.out}: {args.checkpoint} as a reference state dict "
            f"({_describe(model_config)}){note}")
      return 0
    jobs = _jobs(args)
    params, model_config = load_checkpoint_params(args.checkpoint, **_architecture_flags(args))
    model = TTSR(**model_config, search_chunk_size=args.search_chunk_size)
    run(jobs, model, params, compare=args.compare, max_pixels=args.max_pixels)
  except (InferError, files.DatasetError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
