"""Defaults shared by every experiment: the reference's `option.py` values unless noted.

Experiment files import `get_config()` from here and state only their differences.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.model = ml_collections.ConfigDict(dict(
      n_feats=64,
      num_res_blocks=(16, 16, 8, 4),
      res_scale=1.0,
      lte_reduce_lv3=False,  # Exp1-3: extra 256->64 conv at the end of the LTE
      search_chunk_size=0,  # LR positions per relevance block; 0 = whole matrix (small images)
      dtype="float32",  # 'bfloat16' computes in bf16 with float32 parameters and losses
      remat=False,  # recompute MainNet stage activations in the backward pass
      # Converted torchvision VGG19 weights (.npz, see `python -m ttsr_jax.tools.vgg19`) for the
      # LTE initialisation and the perceptual loss; None = random init (demo and tests only).
      vgg19_weights=ml_collections.config_dict.placeholder(str),
  ))

  config.loss = ml_collections.ConfigDict(dict(
      rec_w=1.0, per_w=0.0, tpl_w=0.0, adv_w=0.0,
      tpl_use_S=False, tpl_type="l2",
      gan_k=2,  # discriminator updates per generator step (option.py GAN_k)
      gp_lambda=10.0,
  ))

  config.optim = ml_collections.ConfigDict(dict(
      lr=1e-4, lr_lte=1e-5, lr_dis=1e-4,
      beta1=0.9, beta2=0.999, eps=1e-8,
      decay=999999, gamma=0.5,  # StepLR over main epochs
  ))

  config.batch_size = 9  # global, over all devices
  config.train_crop_size = 40  # LR patch side; the discriminator sees 4x this
  config.num_init_epochs = 2  # warm-up epochs with the reconstruction loss only
  config.num_epochs = 1
  return config
