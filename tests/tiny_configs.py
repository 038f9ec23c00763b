"""The smallest TTSR config with every loss on, for tests that compare train steps."""

import ml_collections

from configs import default


def all_losses(train_crop_size: int, batch_size: int) -> ml_collections.ConfigDict:
  """n_feats 8, one block per stage, all four losses, two D updates per step."""
  config = default.get_config()
  config.model.n_feats = 8
  config.model.num_res_blocks = (1, 1, 1, 1)
  config.loss.update(rec_w=1.0, per_w=1e-2, tpl_w=1e-2, adv_w=1e-3, gan_k=2)
  config.train_crop_size = train_crop_size  # D sees 4x this
  config.batch_size = batch_size
  # Adam's first steps move each entry by ~lr * sign(g), so entries whose gradient is float
  # noise (|g| << 1e-6) would differ by up to 2 lr between reduction orders. A larger eps makes
  # the update proportional to g there, so comparisons measure the step, not that.
  config.optim.eps = 1e-3
  return config
