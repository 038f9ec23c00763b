"""Defaults shared by every experiment: the reference's `option.py` values unless noted.

Experiment files import `get_config()` (or `get_cufed_config()`, for training on CUFED) from
here and state only their differences.
"""

import ml_collections

from ttsr_jax import vgg19_weights


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.model = ml_collections.ConfigDict(dict(
      n_feats=64,
      num_res_blocks=(16, 16, 8, 4),
      res_scale=1.0,
      lte_reduce_lv3=False,  # Exp1-3: extra 256->64 conv at the end of the LTE
      search_chunk_size=0,  # LR positions per relevance block; 0 = whole matrix (small images)
      # 'exact' (the reference's search), 'factored' (the same scores in another order, 9x fewer
      # operations) or 'coarse' (approximate, coarse-to-fine): docs/inference.md.
      search_mode="exact",
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
  # 0 picks per machine: one sample per device per microbatch on CPUs, the whole batch on GPUs.
  config.microbatches = 1
  config.train_crop_size = 40  # LR patch side; the discriminator sees 4x this
  config.num_init_epochs = 2  # warm-up epochs with the reconstruction loss only
  config.num_epochs = 1

  # Run settings: the reference's train.sh values (save_every, val_every) where it has them.
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

  # Test sets and protocols: docs/data.md ("Test sets") gives each choice's source.
  config.eval = ml_collections.ConfigDict(dict(
      # Comma-separated, evaluated in this order: cufed5 (under data.cufed_dir), sun80, urban100,
      # manga109, wrsr (under test_dir).
      sets="cufed5",
      test_dir="data/testsets",  # holds Sun80/, Urban100/, Manga109/, WR-SR/
      protocol="ttsr",  # 'ttsr': the reference's Y-channel metrics; 'mmagic': RGB, 4 pixels shaved
      # 'mmagic' only: pixels shaved per side (None: its 4) and the Y channel instead of RGB; 4 and
      # True are C2-Matching's PSNR_Y/SSIM_Y (mmsr/models/ref_restoration_model.py). The 'ttsr'
      # protocol shaves nothing, as the reference's utils.py.
      crop_border=ml_collections.config_dict.placeholder(int),
      y_channel=False,
      levels=(1,),  # CUFED5 reference levels, each evaluated alone (the reference uses level 1)
      multi_reference=False,  # also the paper's protocol: the five references stitched into one
      # Sun80: 'random' (one of each image's web references, drawn with reference_seed, as the TTSR
      # authors did and MASA-SR's dataloader/dataset.py does) or 'first' (by file name).
      sun80_reference="random",
      # Manga109 has no references: 'random_hr' (another image of the set, the TTSR paper's
      # Sec. 4.1) or 'lr' (the image's own LR, the paper's Urban100 setting).
      manga109_reference="random_hr",
      reference_seed=0,
      # Sides that are not multiples of 4 (all but CUFED5, which keeps the reference's crop):
      # 'crop' at the bottom and right (the reference's TestSet, C2-Matching's mod_crop) or 'pad'
      # by repeating the edge, scoring the whole image (MASA-SR's dataloader/dataset.py pads).
      sizes="crop",
      num_images=0,  # first N test images of each protocol only; 0 = all
      num_image_grids=3,  # LR | reference | output | ground truth grids sent to TensorBoard
      search_chunk_size=1024,  # bounds the search's memory on large test images; same results
      search_mode="exact",  # as config.model.search_mode; also `infer`'s default
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


def get_cufed_config() -> ml_collections.ConfigDict:
  """The defaults for training on CUFED: the pretrained VGG19 for the LTE (`python -m
  ttsr_jax.tools.vgg19` fetches it) and microbatches picked per machine."""
  config = get_config()
  config.model.vgg19_weights = str(vgg19_weights.default_weights_path())
  config.microbatches = 0
  return config
