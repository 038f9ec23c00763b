"""Installs ttsr_jax; `pip install -e .[test]` also brings what the test-suite needs,
`pip install -e '.[app]'` the browser app (`python -m ttsr_jax.app`), and
`pip install -e '.[cuda13]'` (or `'.[cuda12]'`) JAX's CUDA backend for NVIDIA GPUs."""

from setuptools import find_packages, setup

# Versions the test suite passes with, pinned so that results reproduce; tensorflow-cpu only feeds
# tf.data.
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "tensorflow-cpu==2.21.0",
    "tensorboard==2.21.0",
    "tensorflow-datasets==4.9.10",
    "ml-collections==1.1.0",
    "clu==0.0.12",
    "numpy>=2.4,<2.5",
    # Gradio 6 (the app) requires Pillow < 13; the parity tests pass with this release.
    "pillow==12.3.0",
    "scikit-image>=0.26,<0.27",  # real photos for the demo dataset
    "tqdm>=4.60",  # make_pairs' progress bars (tensorflow-datasets installs it too)
    "matplotlib>=3.9",
    # tensorflow-datasets needs it to prepare datasets but does not declare it
    "importlib_resources",
]

# The app's web framework; the test extra has it too, for the app's tests.
GRADIO = "gradio==6.31.0"

setup(
    name="ttsr_jax",
    version="0.1.0",
    description=("TTSR (texture transformer super-resolution) in JAX/Flax, "
                 "matching the PyTorch reference"),
    packages=find_packages(include=["ttsr_jax", "ttsr_jax.*", "data_pipeline", "data_pipeline.*",
                                    "configs"]),
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require={
        # The browser test drives Debian's chromium (apt-get install chromium) through Playwright.
        "test": ["pytest>=8", "pytest-xdist==3.8.0", "h5py>=3.10", "ruff==0.17.6", GRADIO,
                 "playwright==1.65.3"],
        "app": [GRADIO],
        # NVIDIA GPUs: JAX's CUDA plugin and the CUDA/cuDNN wheels, at the jax version above.
        # cuda12 needs an NVIDIA driver >= 525.60.13, cuda13 one >= 580 (Linux x86_64/aarch64).
        "cuda12": ["jax[cuda12]==0.10.2"],
        "cuda13": ["jax[cuda13]==0.10.2"],
    },
)
