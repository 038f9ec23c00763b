"""TTSR (texture transformer super-resolution) in JAX/Flax, matching the PyTorch reference."""

# data_pipeline sets TensorFlow's environment on import; it must come before anything of ours
# (clu, tf.data) imports TensorFlow.
import data_pipeline  # noqa: F401
