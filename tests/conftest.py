"""Shared test set-up: quiet TensorFlow and a persistent XLA cache."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import pathlib

import jax

# Compiled programs are reused across test processes and runs; CI starts cold but still gains
# within a run because several tests compile identical programs.
jax.config.update("jax_compilation_cache_dir", str(pathlib.Path.home() / ".cache" / "ttsr_jax_xla"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
