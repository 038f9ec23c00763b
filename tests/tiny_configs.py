"""The smallest TTSR: its architecture, random parameters and model inputs, and a config with
every loss on."""

import math

import jax
import ml_collections
import numpy as np

from configs import default
from ttsr_jax import generators
from ttsr_jax import specs

TINY = dict(n_feats=8, num_res_blocks=(1, 1, 1, 1))  # TTSR(**TINY)


def random_params(model_config: dict = TINY, seed: int = 0) -> dict:
  """Generator parameters for TTSR(**model_config), drawn with NumPy at PyTorch's default scale
  (U(-b, b), b = 1/sqrt(fan_in) of the layer): `TTSR.init` would compile a random-number program
  for every parameter shape, which takes XLA:CPU longer than most tests."""
  shapes = generators.abstract_params(specs.ModelSpec(**model_config))
  # A bias shares its layer's (its kernel's) fan-in.
  fan_ins = {jax.tree_util.keystr(path[:-1]): math.prod(leaf.shape[:-1])
             for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]
             if path[-1].key == "kernel"}
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    fan_in = fan_ins[jax.tree_util.keystr(path[:-1])]
    return rng.uniform(-1, 1, leaf.shape).astype(np.float32) / math.sqrt(fan_in)

  return jax.tree_util.tree_map_with_path(draw, shapes)


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
