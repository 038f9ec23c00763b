"""JAX's persistent compilation cache, on by default for the commands.

Test images and one's own photos keep their own sizes, so evaluation and inference compile the
model once per distinct input shape (several seconds each on a CPU). With the cache on, a later
run, in another process, loads those programs from disk instead of compiling them again.

The directory is `$XDG_CACHE_HOME/ttsr_jax/xla` (`~/.cache/ttsr_jax/xla` when XDG_CACHE_HOME is
unset). JAX's own environment variables take precedence: `JAX_COMPILATION_CACHE_DIR=DIR` moves
it, `JAX_ENABLE_COMPILATION_CACHE=false` turns it off. JAX's thresholds apply: only programs
that took at least `jax_persistent_cache_min_compile_time_secs` (1 s) to compile are stored.
"""

import os
import pathlib
from typing import Optional

import jax


def default_directory() -> pathlib.Path:
  """Where the commands keep compiled programs unless JAX_COMPILATION_CACHE_DIR says otherwise."""
  base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
  return pathlib.Path(base) / "ttsr_jax" / "xla"


def enable() -> Optional[str]:
  """Turns the persistent cache on in `default_directory()` unless a directory was chosen
  already (JAX_COMPILATION_CACHE_DIR, or `jax.config` in the calling program).

  Returns:
    The cache directory in use, or None when the cache is off.
  """
  if jax.config.jax_compilation_cache_dir is None:
    jax.config.update("jax_compilation_cache_dir", str(default_directory()))
  if not jax.config.jax_enable_compilation_cache:
    return None
  return jax.config.jax_compilation_cache_dir or None
