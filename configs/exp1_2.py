"""Exp1-2: TTSR with all losses (rec 1, per 0.01, tpl 0.01, adv 0.01), batch 6, 2 warm-up + 30
epochs.

Source: the project's experiment list (docs/training.md, "Configs"; batch 6 was the most a 6 GB
GPU held with all losses). Note adv_w 0.01, ten times train.sh's 1e-3. Everything else is the
reference's option.py and train.sh.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_cufed_config()
  config.loss.update(rec_w=1.0, per_w=1e-2, tpl_w=1e-2, adv_w=1e-2)
  config.batch_size = 6
  config.num_init_epochs = 2
  config.num_epochs = 30
  return config
