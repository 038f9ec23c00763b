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
      # 'exact': float32 at full precision everywhere (the reference's numbers); 'fast': bfloat16
      # convolutions in MainNet, the perceptual VGG19 and the discriminator, for GPUs/TPUs.
      # Parameters, gradients, optimiser states and losses stay float32 (docs/training.md).
      precision="exact",
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
  # Sequential microbatches per step (gradient accumulation): the same gradients with about
  # 1/microbatches of the activation memory; batch_size must be a multiple of
  # microbatches x devices. With the adversarial loss on, the generator's forward runs twice.
  config.microbatches = 1
  config.train_crop_size = 40  # LR patch side; the discriminator sees 4x this
  config.num_init_epochs = 2  # warm-up epochs with the reconstruction loss only
  config.num_epochs = 1

  # Run settings: the reference's train.sh values (save_every, val_every; TTSR_SPEC 7) where it has
  # them.
  config.eval_every = 10  # main epochs between CUFED5 evaluations (also after the last); 0 = never
  config.checkpoint_every = 10  # epochs between checkpoints (also after evaluations and the last)
  config.keep_checkpoints = 3  # latest checkpoints kept, besides the best by PSNR
  config.log_every = 100  # steps averaged per logged value (train.sh prints every 600)
  # Steps traced by jax.profiler into WORKDIR/tensorboard (TensorBoard's profile tab), from the
  # run's second step; 0 = off.
  config.profile_steps = 0

  config.data = ml_collections.ConfigDict(dict(
      cufed_dir="data/CUFED",  # train/input, train/ref and test/CUFED5 (docs/data.md)
      # The prepared TFDS dataset; None = CUFED_DIR/tfds. Prepared on first use if missing.
      data_dir=ml_collections.config_dict.placeholder(str),
  ))

  config.eval = ml_collections.ConfigDict(dict(
      protocol="ttsr",  # 'ttsr': the reference's Y-channel metrics; 'mmagic': RGB, 4 pixels shaved
      levels=(1,),  # CUFED5 reference levels, each evaluated alone (the reference uses level 1)
      multi_reference=False,  # also the paper's protocol: the five references stitched into one
      num_images=0,  # first N test images only; 0 = all
      num_image_grids=3,  # LR | reference | output | ground truth grids sent to TensorBoard
      search_chunk_size=4096,  # bounds the search's memory on large test images; same results
  ))

  # Multi-host: launch.py calls jax.distributed.initialize(coordinator_address, num_processes,
  # process_id) when `initialize` is set; None lets JAX detect them (SLURM, TPU pods, ...).
  config.distributed = ml_collections.ConfigDict(dict(
      initialize=False,
      coordinator_address=ml_collections.config_dict.placeholder(str),
      num_processes=ml_collections.config_dict.placeholder(int),
      process_id=ml_collections.config_dict.placeholder(int),
  ))
  return config
