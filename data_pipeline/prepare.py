"""Prepares the `cufed` TFDS dataset from a CUFED directory (all the Pillow work, once).

  python -m data_pipeline.prepare --cufed_dir DIR [--data_dir DIR/tfds] [--patch_size 160]

Re-running it is a no-op once the dataset exists; delete DATA_DIR/cufed/patchN to rebuild.
"""

import argparse

from data_pipeline import cufed
from data_pipeline import samples


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--cufed_dir", required=True,
                      help="CUFED root holding train/input and train/ref")
  parser.add_argument("--data_dir", default=None,
                      help="TFDS data directory (default CUFED_DIR/tfds)")
  parser.add_argument("--patch_size", type=int, default=samples.DEFAULT_PATCH_SIZE)
  args = parser.parse_args(argv)
  builder = cufed.prepare(args.cufed_dir, args.data_dir, args.patch_size)
  print(f"{builder.info.splits['train'].num_examples} training examples in {builder.data_dir}")


if __name__ == "__main__":
  main()
