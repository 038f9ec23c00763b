"""TTSR with all losses, as the reference's train.sh.

Source: the reference's train.sh (researchmm/TTSR): batch 9, lr 1e-4 (LTE 1e-5, D 1e-4), rec_w 1,
per_w 1e-2, tpl_w 1e-2, adv_w 1e-3, 2 warm-up epochs + 50, save_every 10, val_every 10. The
released TTSR.pt scores 25.40 / 0.760 on CUFED5 level 1 with the 'ttsr' protocol (the
reference's README; docs/training.md).
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_cufed_config()
  config.loss.update(rec_w=1.0, per_w=1e-2, tpl_w=1e-2, adv_w=1e-3)
  config.num_init_epochs = 2
  config.num_epochs = 50
  return config
