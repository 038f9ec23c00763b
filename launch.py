r"""Trains or evaluates TTSR.

  python launch.py --config=configs/exp1_2.py --workdir=workdirs/exp1_2
  python launch.py --config=configs/exp1_2.py --workdir=workdirs/exp1_2 --mode=eval \
      [--checkpoint=latest|best|PATH]

Any config field can be overridden, e.g. `--config.batch_size=4`; a mistyped field is an error.
Training resumes from the workdir's checkpoints by itself. docs/training.md has the details.
"""

import logging as py_logging
import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from data_pipeline import files
from ttsr_jax import checkpoint
from ttsr_jax import compile_cache
from ttsr_jax import specs
from ttsr_jax import train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard events and metrics.")
flags.DEFINE_enum("mode", "train", ["train", "eval"],
                  "train: train (resuming from --workdir) and evaluate; "
                  "eval: evaluate a checkpoint.")
flags.DEFINE_string("checkpoint", "latest",
                    "eval mode: 'latest' or 'best' (by PSNR) checkpoint of --workdir, or the path "
                    "of a workdir, its checkpoints/ directory or one checkpoints/<step> directory.")
flags.mark_flags_as_required(["config", "workdir"])


class _OrbaxFilter(py_logging.Filter):
  """Drops Orbax's INFO records (several per save or restore), its warnings for checkpoints saved
  without metrics (those between evaluations) and for read-only managers (eval mode), both by
  design, and the tracebacks its worker threads log for an error that the failing save raises
  again in the caller (reported there in one line); other warnings and errors pass."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    if f"{os.sep}orbax{os.sep}" not in record.pathname:
      return True
    message = record.getMessage()
    return record.levelno > py_logging.INFO and not any(
        text in message for text in ("did not provide metrics", "Given directory is read only",
                                     "_SignalingThread.run() raised an exception"))


def _warn_if_cpu_only(config) -> None:
  """One warning line when a config sized or tuned for accelerators finds only CPU devices
  (usually a CPU-only JAX: `pip install -e .` does not bring the CUDA backend)."""
  if jax.default_backend() != "cpu":
    return
  reasons = []
  if config.model.precision != "exact":
    reasons.append(f"model.precision={config.model.precision!r} (no faster on CPUs)")
  if config.model.n_feats >= 64:
    reasons.append("the paper-sized model")
  if reasons:
    logging.warning("JAX sees only CPU devices, but the config asks for %s. For NVIDIA GPUs "
                    "install JAX's CUDA backend: pip install -e '.[cuda13]' (driver >= 580) or "
                    "'.[cuda12]' (driver >= 525.60.13); see docs/training.md",
                    " and ".join(reasons))


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  config = FLAGS.config
  try:
    run = specs.run_spec(config)  # a bad value stops here, before anything compiles
  except specs.SpecError as e:
    raise app.UsageError(str(e)) from None
  if config.distributed.initialize:
    jax.distributed.initialize(coordinator_address=config.distributed.coordinator_address,
                               num_processes=config.distributed.num_processes,
                               process_id=config.distributed.process_id)
  logging.get_absl_handler().addFilter(_OrbaxFilter())
  # JAX reports at INFO each backend it looked for and did not find ("Unable to initialize
  # backend 'tpu' ... libtpu.so"), which reads like a fault on a healthy CPU or GPU machine;
  # its warnings (a GPU without a CUDA-enabled jaxlib) still show.
  py_logging.getLogger("jax._src.xla_bridge").setLevel(py_logging.WARNING)
  cache = compile_cache.enable()
  logging.info("JAX process %d of %d, %d local devices of %d (%s); compiled programs %s",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count(), jax.default_backend(),
               f"cached in {cache}" if cache else "not cached")
  _warn_if_cpu_only(config)
  try:
    if FLAGS.mode == "train":
      train.train_and_evaluate(run, FLAGS.workdir)
    else:
      train.evaluate(run, FLAGS.workdir, FLAGS.checkpoint)
  except (train.TrainError, checkpoint.CheckpointError, files.DatasetError) as e:
    logging.error("%s", e)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
