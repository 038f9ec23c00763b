r"""The paper's results table for one checkpoint, without a training workdir.

  python -m ttsr_jax.eval_checkpoint --checkpoint TTSR-rec.pt \
      --sets cufed5,sun80,urban100,manga109,wrsr --cufed_dir data/CUFED --test_dir data/testsets \
      [--out results.json] [--multi_reference true] [--protocol mmagic] [--num_images 5] ...

Every `config.eval` field of configs/default.py is a flag of the same name and default (lists
comma-separated: `--levels 1,2`); docs/data.md ("Test sets") says what each choice means and where
it comes from. The checkpoint is a reference state dict (.pt/.pth, needs torch; or .npz of the same
keys) or one of our Orbax checkpoints, read as `python -m ttsr_jax.infer` reads it.

Every image file is decoded before the model first runs (one line per bad file). The table
(markdown) goes to stdout, a progress bar per protocol to stderr, and --out is written as
eval_<step>.json is (checkpoint, step, `config.eval` values, images per protocol, results), again
after each protocol, so an error or Ctrl-C keeps what was scored. --skip_missing goes on without
the sets whose files are missing, naming them. Compiled programs persist across runs
(`ttsr_jax.compile_cache`).
"""

import argparse
import dataclasses
import json
import pathlib
import sys
from collections.abc import Sequence
from typing import Any, Optional

from absl import logging as absl_logging
import jax
import ml_collections

from configs import default
from data_pipeline import files
from ttsr_jax import checkpoint
from ttsr_jax import compile_cache
from ttsr_jax import evaluate
from ttsr_jax import generators
from ttsr_jax import specs
from ttsr_jax.models.search_transfer import SEARCH_MODES


def _parse_bool(text: str) -> bool:
  if text.lower() not in ("true", "false"):
    raise argparse.ArgumentTypeError(f"{text!r}: expected true or false")
  return text.lower() == "true"


def _parse_ints(text: str) -> tuple[int, ...]:
  try:
    return tuple(int(part) for part in text.split(","))
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers") from None


def _parser(eval_defaults: ml_collections.ConfigDict) -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m ttsr_jax.eval_checkpoint",
      description="Evaluates a checkpoint on the test sets and prints the results table.")
  parser.add_argument("--checkpoint", type=pathlib.Path, required=True,
                      help="reference state dict (.pt/.pth/.npz) or Orbax checkpoint")
  parser.add_argument("--res_scale", type=float, default=None,
                      help="residual scale for state dicts, which do not record it (default 1)")
  parser.add_argument("--cufed_dir", default=default.get_config().data.cufed_dir,
                      help="CUFED root holding test/CUFED5 (default: %(default)s)")
  parser.add_argument("--out", type=pathlib.Path, default=None,
                      help="also write the record as JSON (as eval_<step>.json), updated after "
                      "each protocol")
  parser.add_argument("--skip_missing", action="store_true",
                      help="evaluate the sets that are present and name the ones whose files are "
                      "missing, instead of stopping")
  for key in eval_defaults:
    kind = eval_defaults.get_type(key)
    parse = {bool: _parse_bool, tuple: _parse_ints}.get(kind, kind)
    value = eval_defaults[key]
    shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
    # --search: the name `infer` gives the search mode.
    names = [f"--{key}"] + ["--search"] * (key == "search_mode")
    choices = SEARCH_MODES if key == "search_mode" else None
    parser.add_argument(*names, type=parse, default=value, choices=choices,
                        help=f"config.eval.{key} (default: {shown})")
  return parser


def eval_spec(args: argparse.Namespace) -> specs.EvalSpec:
  """The checked evaluation of configs/default.py with the flags' values.

  Raises:
    specs.SpecError: a flag value no evaluation can be made of.
  """
  config = default.get_config()
  config.data.cufed_dir = args.cufed_dir
  for key in config.eval:
    config.eval[key] = getattr(args, key)
  return specs.eval_spec(config)


def _step(path: pathlib.Path) -> tuple[str, Optional[int]]:
  """The checkpoint as recorded and its training step (None for a state dict, which has none)."""
  if not path.is_dir():
    return str(path), None
  directory, step = checkpoint.locate(path, str(path))
  return str(directory / str(step)), step


def _without_missing_sets(model: specs.ModelSpec, evaluator: evaluate.Evaluator
                          ) -> tuple[evaluate.Evaluator, dict[str, str]]:
  """An evaluator of the sets of `evaluator` that are present, and the others' reasons."""
  missing = evaluator.missing_sets()
  kept = tuple(s for s in evaluator.spec.sets if s not in missing)
  if not kept:
    raise files.MissingDataError("no test set is present: " + "; ".join(missing.values()))
  if missing:
    evaluator = evaluate.Evaluator(model, dataclasses.replace(evaluator.spec, sets=kept))
  return evaluator, missing


def _write_json(path: pathlib.Path, record: dict[str, Any]) -> None:
  """Writes through a temporary file, so an interrupted write leaves the previous record."""
  path.parent.mkdir(parents=True, exist_ok=True)
  partial = path.with_name(f".{path.name}.partial")
  partial.write_text(json.dumps(record, indent=2))
  partial.replace(path)


def main(argv: Optional[Sequence[str]] = None) -> int:
  """The command line; returns the exit status (0 done, 1 user error, 2 bad flags, 130 Ctrl-C)."""
  args = _parser(default.get_config().eval).parse_args(argv)
  absl_logging.set_verbosity(absl_logging.ERROR)  # Orbax reports every restore at INFO
  cache = compile_cache.enable()
  skipped: dict[str, str] = {}
  try:
    spec = eval_spec(args)
    params, model = generators.load(args.checkpoint, res_scale=args.res_scale)
    checkpoint_name, step = _step(args.checkpoint)
    evaluator = evaluate.Evaluator(model, spec)
    if args.skip_missing:
      evaluator, skipped = _without_missing_sets(model, evaluator)
    evaluator.check_data()
  except (checkpoint.CheckpointError, files.DatasetError, specs.SpecError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  for test_set, reason in skipped.items():
    print(f"skipped {evaluate.SET_TITLES[test_set]}: {reason}", file=sys.stderr)
  checked, problems = evaluator.check_images(progress=True)
  for problem in problems:
    print(f"error: {problem}", file=sys.stderr)
  if problems:
    print(f"error: {len(problems)} of {checked} test image files cannot be used; replace or "
          "remove them (nothing was evaluated)", file=sys.stderr)
    return 1
  print(f"{checked} test image files decode; compiled models are "
        + (f"kept in {cache} for later runs" if cache else "not cached (cache off)"),
        file=sys.stderr)

  extra = {"checkpoint": checkpoint_name, "step": step}
  if skipped:
    extra["skipped"] = skipped
  scored: dict[str, float] = {}

  def keep(results: dict[str, float]) -> None:
    scored.update(results)
    if args.out is not None:
      _write_json(args.out, evaluate.evaluate_record(evaluator.spec, scored, evaluator.images,
                                                     **extra))

  status = 0
  try:
    evaluator(jax.device_put(params), on_protocol=keep)
  except files.DatasetError as e:
    print(f"error: {e}", file=sys.stderr)
    status = 1
  except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    status = 130
  if status and scored:
    print(f"the {len(evaluator.images)} protocols scored before are below"
          + (f" and in {args.out}" if args.out is not None else ""), file=sys.stderr)
  if scored:
    print("\n".join(evaluate.results_table(
        evaluate.evaluate_record(evaluator.spec, scored, evaluator.images, **extra))))
  return status


if __name__ == "__main__":
  sys.exit(main())
