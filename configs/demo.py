"""A small TTSR trained on the demo dataset in a few minutes on a 2-core CPU.

  python -m data_pipeline.make_demo --out data/demo
  python launch.py --config=configs/demo.py --workdir=workdirs/demo

Not a paper setting. Sized by measurement (docs/training.md) so that the run, compilation,
dataset preparation and evaluations included, takes minutes on a 2-core CPU and its final
evaluation beats bicubic upsampling on the demo's test images:
  * a narrow, shallow MainNet (16 channels, 2+2+1+1 residual blocks);
  * 32x32 training patches (LR 8x8), centre-cropped from the demo's 160x160 pairs when the loop
    first prepares them: a step costs a quarter of a 64x64 one, and the extra updates help more
    than the larger context (docs/training.md, "The demo");
  * the reconstruction loss only, batch 16, Adam at 2e-3 halved every 8 epochs (the reference's
    StepLR), 24 epochs of 30 steps;
  * a randomly initialised VGG19 for the LTE (no download needed; the logs say so loudly).
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.data.cufed_dir = "data/demo"
  config.model.n_feats = 16
  config.model.num_res_blocks = (2, 2, 1, 1)
  config.optim.lr = 2e-3
  config.optim.decay = 8
  config.train_crop_size = 8
  config.batch_size = 16
  config.num_init_epochs = 0
  config.num_epochs = 24
  config.eval_every = 8
  config.checkpoint_every = 8
  config.log_every = 30
  return config
