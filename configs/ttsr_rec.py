"""TTSR-rec: the reconstruction loss only, as the reference's commented-out rec variant of train.sh.

Source: the reference's train.sh (researchmm/TTSR): batch 9, lr 1e-4 (LTE 1e-5, D 1e-4), per_w =
tpl_w = adv_w = 0, num_init_epochs 0, num_epochs 200, save_every 10, val_every 10. The released
TTSR-rec.pt scores 26.99 / 0.800 on CUFED5 level 1 with the 'ttsr' protocol (the paper's
Table 1; docs/training.md).
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_cufed_config()
  config.num_init_epochs = 0
  config.num_epochs = 200
  return config
