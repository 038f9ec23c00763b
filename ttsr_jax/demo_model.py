"""The small demo model that ships with the repository, used when no checkpoint is given.

It is configs/demo.py trained on the demo dataset built from scikit-image's photos (docs/app.md
has the command that reproduces it), exported as a reference-layout state dict.
"""

import pathlib

CHECKPOINT = pathlib.Path(__file__).resolve().parents[1] / "assets" / "demo_model" / "ttsr_demo.npz"
# Shown wherever the demo model is used in place of a real one; the figures are its training
# run's final evaluation (docs/app.md).
DESCRIPTION = ("a small demo model (configs/demo.py, trained for minutes on 2 CPU cores on "
               "scikit-image photos; not the paper's): on its test set PSNR 31.82 dB / SSIM 0.837, "
               "bicubic 31.14 dB / 0.822")
