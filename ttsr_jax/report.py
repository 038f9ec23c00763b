r"""Experiment reports: a markdown lab notebook generated from training workdirs.

  python -m ttsr_jax.report --workdir DIR [--workdir DIR2 ...] --out REPORT_DIR \
      [--num_samples 3] [--cufed_dir CUFED_DIR]

From each workdir that `train.train_and_evaluate` wrote (layout in ttsr_jax/train.py) it reads
  * the TensorBoard events (WORKDIR/tensorboard): every train/* scalar, eval/<protocol>/{psnr,
    ssim,bicubic_psnr,bicubic_ssim}, the hparams written at a fresh start, and the time from the
    first to the last event of each launch;
  * WORKDIR/evals.jsonl for the epoch of each evaluation, and the eval_<step>.json files that
    `launch.py --mode=eval` writes;
  * the checkpoints: the latest one's stored config and the number of devices its state was saved
    from, and the best one's generator (by PSNR), which renders the sample grids on CUFED5;
and writes REPORT_DIR/README.md (configuration and results tables, plots and samples embedded),
REPORT_DIR/plots/*.png and REPORT_DIR/samples/<run>/<image>.png. docs/report.md shows an example.

A workdir without events or without checkpoints is reported with what it has, and the README
and stderr say what is missing; the command fails only when no workdir has anything to report.
"""

import argparse
import itertools
import os
import pathlib
import shlex
import sys
from collections.abc import Sequence
from typing import Any, Optional, Union

from absl import logging as absl_logging
from flax import traverse_util
import jax
import ml_collections
import numpy as np
from PIL import Image

from configs import default
from data_pipeline import cufed5
from data_pipeline import files
from data_pipeline import samples
from ttsr_jax import checkpoint
from ttsr_jax import evaluate as evaluate_lib
from ttsr_jax import generators
from ttsr_jax import plots
from ttsr_jax import predict
from ttsr_jax import specs
from ttsr_jax import runs as runs_lib
from ttsr_jax.runs import MISSING, Run

PathLike = Union[str, os.PathLike]

SAMPLE_LEVEL = 1  # CUFED5 reference level of the sample grids (the reference's evaluation)
DEFAULT_NUM_SAMPLES = 3
# CUFED5, 'ttsr' protocol (the reference's README and the paper): the released checkpoints
# through eval.sh (level-1 references), and the paper's Table 1 figure, which stitched the five
# references of each image.
PUBLISHED = (
    ("TTSR-rec (released TTSR-rec.pt, eval.sh)", "level1", "26.99", "0.800"),
    ("TTSR (released TTSR.pt, eval.sh)", "level1", "25.40", "0.760"),
    ("TTSR-rec, paper Table 1", "multi_reference", "27.09", "—"),
)


class ReportError(Exception):
  """Nothing could be reported; printed as one line."""


def sampling_config(stored: dict[str, Any]) -> ml_collections.ConfigDict:
  """configs/default.py with a run's stored config values: a run written before a field existed
  (such as `model.precision`) gets the field's default, and a field since removed (such as the
  old `model.dtype`) is ignored, so that older workdirs still give samples."""
  config = default.get_config()
  known = traverse_util.flatten_dict(config.to_dict(), sep=".")
  config.update_from_flattened_dict({
      key: tuple(value) if isinstance(known[key], tuple) else value
      for key, value in traverse_util.flatten_dict(stored, sep=".").items() if key in known})
  return config


def render_samples(run: Run, out_dir: PathLike, num_samples: int,
                   cufed_dir: Optional[PathLike] = None) -> list[pathlib.Path]:
  """Writes a grid per CUFED5 test image for the run's best checkpoint; returns the PNG paths.

  Each grid is the training loop's (`evaluate.image_grid`) with the LR input nearest-upscaled
  x4, so its pixels stay visible: LR | level-1 reference | output | ground truth.

  Raises:
    checkpoint.CheckpointError: the checkpoint cannot be read.
    files.DatasetError: no CUFED5 test set under `cufed_dir` (default: the run's config).
  """
  directory, step = run.sample_checkpoint
  config = sampling_config(run.config)
  params, _ = generators.load(directory / str(step))
  params = jax.device_put(params)
  # The evaluation's model: the run's precision, and the search chunked for large test images.
  model = specs.model_spec(config.model).build(
      search_chunk_size=config.eval.search_chunk_size)
  sr_fn = predict.sr_function(model)
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  paths = []
  batches = cufed5.level_samples(cufed_dir or config.data.cufed_dir, SAMPLE_LEVEL)
  for image, batch in itertools.islice(batches, num_samples):
    sr = sr_fn(params, *(batch[k] for k in samples.MODEL_INPUT_KEYS))
    nearest = batch["lr"].repeat(samples.SCALE, axis=1).repeat(samples.SCALE, axis=2)
    paths.append(out_dir / f"{image}.png")
    grid = predict.panels([("LR", predict.to_uint8(nearest[0])),
                           *((caption, predict.to_uint8(np.asarray(x)[0])) for caption, x in (
                               ("reference", batch["ref"]), ("TTSR", sr),
                               ("ground truth", batch["hr"])))])
    Image.fromarray(grid).save(paths[-1])
  return paths


def _format(value: Any) -> str:
  """A config value for the tables; hparams hold None as 'None' and integers as floats."""
  if value is None or value == "None":
    return MISSING
  if isinstance(value, bool):
    return "yes" if value else "no"
  if isinstance(value, (int, float)):
    return f"{value:g}"
  return str(value)


def _duration(seconds: float) -> str:
  minutes, seconds = divmod(round(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {seconds:02d} s"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
          *("| " + " | ".join(row) + " |" for row in rows)]


def _config_rows(run: Run) -> list[tuple[str, str]]:
  """(label, value) rows of the configuration table."""
  c = run.flat_config

  def get(*keys: str, sep: str = " / ") -> str:
    return sep.join(_format(c.get(key)) for key in keys) if c else MISSING

  vgg = get("model.vgg19_weights")
  if c and vgg == MISSING:
    vgg = "random init"
  time = MISSING
  if run.launch_seconds:
    launches = len(run.launch_seconds)
    time = f"{_duration(sum(run.launch_seconds))} ({launches} launch{'es' * (launches > 1)})"
  return [
      ("batch size (global)", get("batch_size")),
      ("epochs: warm-up + main", get("num_init_epochs", "num_epochs", sep=" + ")),
      ("loss weights: rec / per / tpl / adv",
       get(*(f"loss.{k}_w" for k in ("rec", "per", "tpl", "adv")))),
      ("learning rate: main / LTE / D", get("optim.lr", "optim.lr_lte", "optim.lr_dis")),
      ("model: n_feats, residual blocks", get("model.n_feats", "model.num_res_blocks", sep=", ")),
      ("LTE 256->64 conv (Exp1-3)", get("model.lte_reduce_lv3")),
      ("precision, remat", get("model.precision", "model.remat", sep=", ")),
      ("VGG19 weights", vgg),
      ("training patch (HR)",
       _format(4 * c["train_crop_size"]) if "train_crop_size" in c else MISSING),
      ("data", get("data.cufed_dir")),
      ("evaluation: protocol, levels", get("eval.protocol", "eval.levels", sep=", ")),
      ("devices", _format(run.devices)),
      ("steps trained", _format(run.last_step())),
      ("epoch length (steps)", _format(run.steps_per_epoch)),
      ("wall-clock train time", time),
      ("config from", run.config_source),
  ]


def _score(values: dict[Any, float], key: Any, metric: str) -> str:
  """PSNR to 3 decimals and SSIM to 4, as the training logs them; '—' if absent."""
  if key not in values:
    return MISSING
  return f"{values[key]:.{4 if metric.endswith('ssim') else 3}f}"


def _result_rows(run: Run) -> list[list[str]]:
  rows = []
  for protocol in run.protocols():
    scores = {metric: dict(run.scalars.get(f"eval/{protocol}/{metric}", []))
              for metric in evaluate_lib.SCORES}
    psnr = scores["psnr"]
    best, final = max(psnr, key=psnr.get), max(psnr)
    at = lambda step, *metrics: [_score(scores[m], step, m) for m in metrics]
    rows.append([run.name, protocol, *at(best, "psnr", "ssim"), run.when(best),
                 *at(final, "psnr", "ssim"), run.when(final),
                 *at(final, "bicubic_psnr", "bicubic_ssim")])
  return rows


def _eval_file_rows(run: Run) -> list[list[str]]:
  rows = []
  for record in run.eval_files:
    for protocol in sorted({k.split("/")[0] for k in record if k.endswith("/psnr")}):
      rows.append([run.name, f"`{record.get('checkpoint', MISSING)}`",
                   str(record.get("protocol", MISSING)), protocol,
                   *(_score(record, f"{protocol}/{m}", m) for m in evaluate_lib.SCORES)])
  return rows


def _image(path: pathlib.Path, root: pathlib.Path) -> str:
  return f"![{path.stem}]({path.relative_to(root).as_posix()})"


def _run_names(workdirs: Sequence[pathlib.Path]) -> list[str]:
  """The shortest trailing parts of the workdirs' paths that tell them apart ('exp1_1', or
  'a/run' and 'b/run')."""
  parts = [w.absolute().parts for w in workdirs]
  for depth in range(1, max(map(len, parts)) + 1):
    names = ["/".join(p[-depth:]) for p in parts]
    if len(set(names)) == len(names):
      return names
  return [str(w) for w in workdirs]  # the same directory given twice


def write_report(workdirs: Sequence[PathLike], out: PathLike,
                 num_samples: int = DEFAULT_NUM_SAMPLES,
                 cufed_dir: Optional[PathLike] = None) -> tuple[pathlib.Path, list[Run]]:
  """Writes OUT/README.md, OUT/plots and OUT/samples for the runs in `workdirs`.

  Args:
    workdirs: training workdirs, one run each (overlaid in the plots, in this order).
    out: the report's directory (created; files of an earlier report there are overwritten).
    num_samples: CUFED5 test images in each run's sample grid (0: none).
    cufed_dir: the CUFED root for the samples (default: each run's config.data.cufed_dir).

  Returns:
    The README's path, and the runs (each with the `problems` the report lists).

  Raises:
    ReportError: no workdir holds events, a checkpoint or an evaluation file.
    checkpoint.DamagedCheckpointError: a checkpoint the report reads is damaged.
  """
  workdirs = [pathlib.Path(w) for w in workdirs]
  runs = [runs_lib.load_run(w, name) for w, name in zip(workdirs, _run_names(workdirs))]
  if not any(run.has_data() for run in runs):
    raise ReportError("nothing to report: " + "; ".join(p for run in runs for p in run.problems))
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)

  sample_paths = {}
  for run in runs:
    if run.sample_checkpoint is None or num_samples <= 0:
      continue
    try:
      sample_paths[run.name] = render_samples(run, out / "samples" / plots.slug(run.name),
                                              num_samples, cufed_dir)
    except checkpoint.DamagedCheckpointError:
      raise  # stops the report (one line in `main`), unlike a missing checkpoint
    except (checkpoint.CheckpointError, files.DatasetError) as e:
      run.problems.append(f"no samples: {e}")
  plot_paths = plots.plot_curves(runs, out / "plots")

  command = ["python", "-m", "ttsr_jax.report", *(f"--workdir={w}" for w in workdirs),
             f"--out={out}"]
  if num_samples != DEFAULT_NUM_SAMPLES:
    command.append(f"--num_samples={num_samples}")
  if cufed_dir is not None:
    command.append(f"--cufed_dir={cufed_dir}")
  lines = [f"# Experiment report: {', '.join(run.name for run in runs)}", "",
           f"Generated by `{shlex.join(command)}`.", ""]
  lines += _table(["run", "workdir"], [[run.name, f"`{run.workdir}`"] for run in runs]) + [""]
  problems = [f"- **{run.name}**: {p}" for run in runs for p in run.problems]
  if problems:
    lines += ["## Missing parts", "", *problems, ""]

  lines += ["## Configuration", ""]
  config_rows = [_config_rows(run) for run in runs]
  lines += _table(["", *(run.name for run in runs)],
                  [[label, *(rows[i][1] for rows in config_rows)]
                   for i, (label, _) in enumerate(config_rows[0])]) + [""]

  lines += ["## Results", "",
            "CUFED5 test set, as the training loop evaluated it (`config.eval`: 'ttsr' is the "
            "reference's Y-channel protocol). The best evaluation is the one with the highest "
            "PSNR, as checkpoints are ranked; bicubic is the bicubic-upsampled input under the "
            "same metric.", ""]
  result_rows = [row for run in runs for row in _result_rows(run)]
  if result_rows:
    lines += _table(["run", "protocol", "best PSNR", "SSIM", "at", "final PSNR", "SSIM", "at",
                     "bicubic PSNR", "bicubic SSIM"], result_rows) + [""]
  else:
    lines += ["No evaluation in the events of any run.", ""]
  lines += ["Published numbers for context (the reference's README and the paper; the real "
            "CUFED5 with the 'ttsr' protocol, so not comparable with a run on other data):", ""]
  lines += _table(["model", "protocol", "PSNR", "SSIM"], [list(row) for row in PUBLISHED]) + [""]
  eval_rows = [row for run in runs for row in _eval_file_rows(run)]
  if eval_rows:
    lines += ["Evaluations by `launch.py --mode=eval` (eval_<step>.json):", ""]
    lines += _table(["run", "checkpoint", "metric protocol", "protocol", "PSNR", "SSIM",
                     "bicubic PSNR", "bicubic SSIM"], eval_rows) + [""]
  for run in runs:
    for record in (r for r in run.eval_files if "eval" in r):
      lines += [f"Results table of `{record.get('checkpoint', MISSING)}` ({run.name}):", "",
                *evaluate_lib.results_table(record), ""]

  if plot_paths:
    lines += ["## Curves", ""]
    for section, paths in plot_paths.items():
      lines += [f"### {section}", "", " ".join(_image(p, out) for p in paths), ""]

  if sample_paths:
    lines += ["## Samples", "",
              f"CUFED5 test images with their level-{SAMPLE_LEVEL} reference, from each run's "
              "best checkpoint: LR input (nearest-neighbour x4) | reference (resized to the "
              "row's height) | output | ground truth.", ""]
    for run in runs:
      if run.name in sample_paths:
        _, step = run.sample_checkpoint
        # The workdir as the user gave it (checkpoint.locate makes the path absolute for Orbax).
        shown = run.workdir / checkpoint.CHECKPOINT_DIR / str(step)
        lines += [f"### {run.name}", "", f"Checkpoint `{shown}`.", ""]
        lines += [f"{p.stem}: {_image(p, out)}" for p in sample_paths[run.name]] + [""]

  readme = out / "README.md"
  readme.write_text("\n".join(lines))
  return readme, runs


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m ttsr_jax.report",
      description="Writes a markdown report (configuration, results, curves, samples) of "
      "training workdirs.")
  parser.add_argument("--workdir", type=pathlib.Path, action="append", required=True,
                      help="a training workdir; repeat to overlay several runs")
  parser.add_argument("--out", type=pathlib.Path, required=True,
                      help="the report's directory (README.md, plots/, samples/)")
  parser.add_argument("--num_samples", type=int, default=DEFAULT_NUM_SAMPLES,
                      help="CUFED5 test images per run's sample grid; 0 = none "
                      "(default: %(default)s)")
  parser.add_argument("--cufed_dir", type=pathlib.Path, default=None,
                      help="CUFED root holding test/CUFED5 for the samples (default: each "
                      "run's config.data.cufed_dir)")
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  """The command line; returns the exit status (0 written, 1 nothing to report or a damaged
  checkpoint, 2 bad flags)."""
  args = _parser().parse_args(argv)
  absl_logging.set_verbosity(absl_logging.ERROR)  # Orbax reports every restore at INFO
  try:
    readme, runs = write_report(args.workdir, args.out, args.num_samples, args.cufed_dir)
  except (ReportError, checkpoint.DamagedCheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  for run in runs:
    for problem in run.problems:
      print(f"warning: {problem}", file=sys.stderr)
  print(f"wrote {readme}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
