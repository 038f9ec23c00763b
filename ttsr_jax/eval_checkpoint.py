r"""The paper's results table for one checkpoint, without a training workdir.

  python -m ttsr_jax.eval_checkpoint --checkpoint TTSR-rec.pt \
      --sets cufed5,sun80,urban100,manga109,wrsr --cufed_dir data/CUFED --test_dir data/testsets \
      [--out results.json] [--multi_reference true] [--protocol mmagic] [--num_images 5] ...

Every `config.eval` field of configs/default.py is a flag of the same name and default (lists
comma-separated: `--levels 1,2`); docs/data.md ("Test sets") says what each choice means and where
it comes from. The checkpoint is a reference state dict (.pt/.pth, needs torch; or .npz of the same
keys) or one of our Orbax checkpoints, read as `python -m ttsr_jax.infer` reads it. Prints the
table (markdown) on stdout, a progress bar per protocol on stderr, and writes --out as
eval_<step>.json is written (checkpoint, `config.eval` values, results).
"""

import argparse
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
from ttsr_jax import evaluate
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
                      help="also write the record as JSON (as eval_<step>.json)")
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


def eval_config(args: argparse.Namespace,
                model_config: dict[str, Any]) -> ml_collections.ConfigDict:
  """configs/default.py with the flags' eval values and the checkpoint's architecture."""
  config = default.get_config()
  config.data.cufed_dir = args.cufed_dir
  for key in config.eval:
    config.eval[key] = getattr(args, key)
  config.model.update(model_config)
  return config


def main(argv: Optional[Sequence[str]] = None) -> int:
  """The command line; returns the exit status (0 done, 1 user error, 2 bad flags)."""
  args = _parser(default.get_config().eval).parse_args(argv)
  absl_logging.set_verbosity(absl_logging.ERROR)  # Orbax reports every restore at INFO
  try:
    params, model_config = checkpoint.load_generator(args.checkpoint, res_scale=args.res_scale)
    config = eval_config(args, model_config)
    evaluator = evaluate.Evaluator(config)  # ValueError: eval values it cannot evaluate
    evaluator.check_data()
  except (checkpoint.CheckpointError, files.DatasetError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  try:
    results, _ = evaluator(jax.device_put(params))
  except files.DatasetError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  record = evaluate.evaluate_record(config, results, checkpoint=str(args.checkpoint))
  if args.out is not None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2))
  print("\n".join(evaluate.results_table(record)))
  return 0


if __name__ == "__main__":
  sys.exit(main())
