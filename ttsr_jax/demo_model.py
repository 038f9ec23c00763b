"""The small demo model that ships with the repository, used when no checkpoint is given.

It is configs/demo.py trained on the demo dataset built from scikit-image's photos (docs/app.md
has the command that reproduces it), exported as a reference-layout state dict.
"""

import pathlib

CHECKPOINT = pathlib.Path(__file__).resolve().parents[1] / "assets" / "demo_model" / "ttsr_demo.npz"
# Shown wherever the demo model is used in place of a real one; figures from docs/app.md.
DESCRIPTION = ("demo model (configs/demo.py: 16 channels, trained 6 minutes on 2 CPU cores on "
               "scikit-image photos), not the paper's: on its test set PSNR {psnr} dB against "
               "bicubic's {bicubic} dB")
