"""A small TTSR trained on the demo dataset in about 10 minutes on a 2-core CPU.

  python -m data_pipeline.make_demo --out data/demo
  python launch.py --config=configs/demo.py --workdir=workdirs/demo

Not a paper setting: a narrow, shallow MainNet, 64x64 patches, a randomly initialised VGG19 (no
download needed; the logs say so) and a higher learning rate, sized by measurement so that the
final evaluation beats bicubic upsampling on the demo's test images (docs/training.md).
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.data.cufed_dir = "data/demo"
  config.model.n_feats = 16
  config.model.num_res_blocks = (2, 2, 1, 1)
  config.optim.lr = 1e-3
  config.train_crop_size = 16  # 64x64 patches, centre-cropped from the demo's 160x160 pairs
  config.batch_size = 8
  config.num_init_epochs = 0
  config.num_epochs = 10
  config.eval_every = 5
  config.checkpoint_every = 5
  config.log_every = 20
  return config
