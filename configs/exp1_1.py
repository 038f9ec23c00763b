"""Exp1-1: TTSR with the reconstruction loss only, batch 8, 30 epochs.

Source: the project's experiment list (docs/training.md, "Configs"; batch 8 was the most a 6 GB
GPU held with the rec loss). Everything else is the reference's option.py and train.sh.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_cufed_config()
  config.batch_size = 8
  config.num_init_epochs = 0
  config.num_epochs = 30
  return config
