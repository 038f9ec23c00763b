"""How far each precision policy moves the forward pass from the reference (parity cases a, b).

  python -m bench.precision_quality [--policies exact,fast] [--check]

For tests/golden cases a and b (the reference's weights, random but fixed), with the search's own
argmax: the share of non-fragile positions whose argmax matches the reference's, max |sr - sr_ref|
on [-1, 1] outputs, and the saved uint8 image against the reference's (max difference in levels,
PSNR over RGB). Runs on any backend; the images are small enough for a CPU.
`--check` exits with status 1 when a policy exceeds its TOLERANCES (docs/training.md).
"""

import argparse
import pathlib
import sys

import jax
import numpy as np

from ttsr_jax import convert, generators, predict, specs
from ttsr_jax.models import precision as precision_lib

GOLDEN_DIR = pathlib.Path(__file__).resolve().parent.parent / "tests" / "golden"
CASES = ("a_forward.npz", "b_forward_testpath.npz")
# Per policy: the least argmax agreement at non-fragile positions, the largest |sr - sr_ref| and
# the largest uint8 difference, on either case. 'exact' is the parity tests' bound; 'fast' about
# three times what it measured on a CPU (docs/benchmarks.md), for other backends' bf16 rounding.
TOLERANCES = {
    "exact": dict(argmax_agreement=1.0, sr_max_abs=1e-5, u8_max=1),
    "fast": dict(argmax_agreement=1.0, sr_max_abs=1e-2, u8_max=2),
}


def _load(name: str) -> dict[str, np.ndarray]:
  with np.load(GOLDEN_DIR / name) as data:
    return {k: data[k] for k in data.files}


def _nhwc(x: np.ndarray) -> np.ndarray:
  return np.asarray(x).transpose(0, 2, 3, 1)


def measure(policy: str) -> list[dict]:
  """One row per case: argmax agreement, max |sr - sr_ref|, uint8 max difference and PSNR."""
  weights = _load("a_weights.npz")
  spec = specs.ModelSpec(**convert.infer_model_config(weights), precision=policy)
  model = spec.build()
  params = convert.import_state_dict(weights, generators.abstract_params(spec))
  forward = jax.jit(lambda p, *images: model.apply({"params": p}, *images))
  rows = []
  for name in CASES:
    case = _load(name)
    out = forward(params, *(_nhwc(case[k]) for k in ("lr", "lrsr", "ref", "refsr")))
    robust = ~case["R_fragile"]
    agree = float(np.mean(np.asarray(out.index)[robust] == case["R_arg"][robust]))
    sr = np.asarray(out.sr, np.float32)
    want = _nhwc(case["sr"])
    ours_u8 = predict.to_uint8(sr[0]).astype(np.float64)
    want_u8 = predict.to_uint8(want[0]).astype(np.float64)
    mse = np.mean((ours_u8 - want_u8) ** 2)
    rows.append(dict(policy=policy, case=name.split("_")[0], sr_dtype=str(out.sr.dtype),
                     argmax_agreement=agree, sr_max_abs=float(np.abs(sr - want).max()),
                     u8_max=int(np.abs(ours_u8 - want_u8).max()),
                     u8_psnr=float("inf") if mse == 0 else float(10 * np.log10(255 ** 2 / mse))))
  return rows


def violations(row: dict) -> list[str]:
  """The TOLERANCES a measured row exceeds, as readable strings."""
  tol = TOLERANCES[row["policy"]]
  found = []
  if row["argmax_agreement"] < tol["argmax_agreement"]:
    found.append(f"argmax agreement {row['argmax_agreement']:.4f} < {tol['argmax_agreement']}")
  for key in ("sr_max_abs", "u8_max"):
    if row[key] > tol[key]:
      found.append(f"{key} {row[key]:.3g} > {tol[key]}")
  return found


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--policies", default=",".join(precision_lib.POLICIES),
                      help="comma-separated policies of ttsr_jax/models/precision.py")
  parser.add_argument("--check", action="store_true",
                      help="exit with status 1 if a policy exceeds its TOLERANCES")
  args = parser.parse_args()
  failures = []
  print(f"{'policy':8} {'case':4} {'argmax agree':>12} {'max|sr-ref|':>11} {'u8 max':>6} "
        f"{'u8 PSNR dB':>10}  device", flush=True)
  for policy in args.policies.split(","):
    for r in measure(policy):
      print(f"{r['policy']:8} {r['case']:4} {100 * r['argmax_agreement']:>11.2f}% "
            f"{r['sr_max_abs']:>11.2e} {r['u8_max']:>6} {r['u8_psnr']:>10.2f}  "
            f"{jax.devices()[0].device_kind}", flush=True)
      failures += [f"{r['policy']} case {r['case']}: {v}" for v in violations(r)]
  if args.check:
    print("\n".join(failures) or "within TOLERANCES")
    if failures:
      sys.exit(1)


if __name__ == "__main__":
  main()
