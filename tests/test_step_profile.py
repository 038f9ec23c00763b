"""bench.step_profile reads XLA's trace: the operations it finds are the compiled program's, and
each is traced to the code that made it."""

import jax
import jax.numpy as jnp

from bench import step_profile


def test_the_profile_names_the_programs_operations_and_their_sources(tmp_path):
  def program(a):
    joined = jnp.concatenate([a, 2 * a], axis=0)
    return jnp.tanh(joined @ a.T).sum()

  x = jnp.linspace(0.0, 1.0, 64 * 64).reshape(64, 64)
  compiled = jax.jit(program).lower(x).compile()
  jax.block_until_ready(compiled(x))
  with jax.profiler.trace(str(tmp_path)):
    jax.block_until_ready(compiled(x))
  times = step_profile.operation_times(str(tmp_path))
  hlo = compiled.as_text()
  assert times
  for name, (seconds, calls) in times.items():
    assert f"%{name} = " in hlo, name
    assert seconds >= 0 and calls == 1
  sources = step_profile.operation_sources(hlo)
  made_by = " ".join(sources.get(name, "") for name in times)
  assert "concatenate" in made_by or "dot_general" in made_by, made_by
