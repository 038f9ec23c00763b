"""Where one train step spends its time: XLA's own trace of the step (`jax.profiler`), its
operations summed by kind.

  python -m bench.step_profile [--variant all] [--batch 9] [--microbatches 9] [--top 15]

The step is `bench.train_step`'s (default model, 160x160 patches, random weights and inputs),
compiled, run once to warm up, then once under the profiler. XLA:CPU runs the program's
operations (thunks) on its threads and names each trace event after the operation of the
optimised HLO module; the table sums them by kind, the operation's name without its number
(`ynn_fusion`: the matrix products and convolutions that XLA hands to YNNPACK; `dot`,
`dot_general`, `convolution`: those it runs itself; the rest XLA's own loops, e.g.
`concatenate`, `wrapped_pad`, `transpose_copy_fusion`). A kernel that spreads its work over
both cores is counted once, on the thread that ran it, so the seconds add up to less than
cores x wall time, and the shares are of the operations' time, not of the step's. The last
table names the `--top` single operations with the model code that made them (the op_name of
the HLO's metadata).
"""

import argparse
import collections
import pathlib
import re
import tempfile
import time

import jax

from bench.train_step import VARIANTS, build_step, cpu_name

# Events on XLA's threads that are not one of the program's operations.
_NOT_OPERATIONS = ("ThunkExecutor", "SlinkyThreadPool", "ThreadpoolListener", "end: ")


def operation_times(trace_dir: str) -> dict[str, tuple[float, int]]:
  """Operation name -> (seconds, calls) on XLA:CPU's threads (its thread pool's, and the client
  thread that runs a small program's operations itself), from the one trace that
  `jax.profiler.trace(trace_dir)` wrote."""
  (path,) = pathlib.Path(trace_dir).rglob("*.xplane.pb")
  data = jax.profiler.ProfileData.from_file(str(path))
  seconds, calls = collections.Counter(), collections.Counter()
  for plane in data.planes:
    for line in plane.lines:
      if not line.name.startswith(("tf_XLAEigen", "tf_XLAPjRtCpuClient")):
        continue
      for event in line.events:
        if not event.name.startswith(_NOT_OPERATIONS):
          seconds[event.name] += event.duration_ns / 1e9
          calls[event.name] += 1
  return {name: (s, calls[name]) for name, s in seconds.items()}


def operation_sources(hlo_text: str) -> dict[str, str]:
  """Operation name -> the op_name of its metadata (which model code made it)."""
  return dict(re.findall(r'%([\w.-]+) = [^\n]*?op_name="([^"]*)"', hlo_text))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--variant", default="all", choices=list(VARIANTS))
  parser.add_argument("--batch", type=int, default=9)
  parser.add_argument("--microbatches", type=int, default=9)
  parser.add_argument("--top", type=int, default=15)
  args = parser.parse_args()

  _, _, train_step, (state, data, vgg_params) = build_step(args.variant, args.batch,
                                                          args.microbatches)
  compiled = train_step.lower(state, data, vgg_params).compile()
  state = jax.block_until_ready(compiled(state, data, vgg_params))[0]  # the state is donated
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir):
      start = time.perf_counter()
      jax.block_until_ready(compiled(state, data, vgg_params))
      step_s = time.perf_counter() - start
    times = operation_times(trace_dir)
  total = sum(s for s, _ in times.values())
  print(f"{args.variant}, batch {args.batch}, microbatches {args.microbatches}: step "
        f"{step_s:.2f} s (under the profiler), operations {total:.2f} s on XLA's threads; "
        f"{cpu_name()}")

  kinds = collections.defaultdict(lambda: [0.0, 0])
  for name, (s, calls) in times.items():
    kind = kinds[re.sub(r"\.\d+$", "", name)]
    kind[0] += s
    kind[1] += calls
  print(f"\n{'kind':32} {'s':>8} {'share':>6} {'calls':>7}")
  for kind, (s, calls) in sorted(kinds.items(), key=lambda item: -item[1][0])[:args.top]:
    print(f"{kind:32} {s:>8.2f} {s / total:>6.1%} {calls:>7}")

  sources = operation_sources(compiled.as_text())
  print(f"\n{'operation':32} {'s':>8} {'calls':>7}  made by")
  for name, (s, calls) in sorted(times.items(), key=lambda item: -item[1][0])[:args.top]:
    print(f"{name:32} {s:>8.3f} {calls:>7}  {sources.get(name, '?')[-110:]}")


if __name__ == "__main__":
  main()
