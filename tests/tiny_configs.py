"""The smallest TTSR: its architecture, random model inputs, and a config with every loss on."""

import jax
import ml_collections

from configs import default

TINY = dict(n_feats=8, num_res_blocks=(1, 1, 1, 1))  # TTSR(**TINY)


def random_inputs(n: int, lr_hw: tuple[int, int], ref_hw: tuple[int, int], seed: int = 0) -> list:
  """(lr, lrsr, ref, refsr), uniform in [-1, 1], for a batch of n."""
  keys = jax.random.split(jax.random.key(seed), 4)
  h, w = lr_hw
  shapes = ((n, h, w, 3), (n, 4 * h, 4 * w, 3), (n, *ref_hw, 3), (n, *ref_hw, 3))
  return [jax.random.uniform(k, s, minval=-1, maxval=1) for k, s in zip(keys, shapes)]


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
