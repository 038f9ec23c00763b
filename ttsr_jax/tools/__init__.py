"""Command-line helpers that prepare files for the model (`python -m ttsr_jax.tools.<name>`).

  vgg19   ImageNet VGG19 weights (torchvision .pth or Keras .h5) -> our .npz, and their loader
"""
