r"""Fused bipartite matching vs XLA's matmul + max/argmax: identical plans, then time.

  python -m tokax.bench.matching_kernel                        # on an H100: N = 197, 577, 4096, bf16
  python -m tokax.bench.matching_kernel --n 37 --gb 0.001 --dtype float32 --interpret   # CPU smoke run

For each N, B is chosen so the dense (B, |A|, |B|) float32 score matrix is ~--gb GB. Both sides
get the same keys (B, N, --channels) and a class token; "xla" is kernels.matching.matching_reference
(normalise, einsum, max, argmax: what ToMe runs with matching="xla"), "pallas" the fused kernel.
Checks node_idx identical and node_max within 1e-6 (reports mismatches and whether each is a tie
within 1e-3 of the dense max), then times both (median of --repeats, each to block_until_ready)
and prints a markdown table with the speed-up and the bytes the dense path moves.
"""
from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from tokax.bench import throughput
from tokax.kernels import matching


def batch_for(n: int, gb: float) -> int:
  """Images so that the dense float32 score matrix is ~gb GB."""
  per_image = ((n + 1) // 2) * (n // 2) * 4
  return max(1, round(gb * 1e9 / per_image))


def timed(fn, *args, repeats: int) -> float:
  """Median seconds of fn(*args) after one warm-up call."""
  return throughput.median_seconds(fn, *args, warmup=1, repeats=repeats)


def run(n: int, gb: float, channels: int, dtype, repeats: int, interpret: bool) -> dict:
  batch = batch_for(n, gb)
  metric = jax.random.normal(jax.random.key(n), (batch, n, channels), jnp.float32).astype(dtype)
  xla = jax.jit(lambda m: matching.matching_reference(m, has_cls=True))
  pallas = jax.jit(lambda m: matching.bipartite_matching(m, has_cls=True, implementation="pallas",
                                                          interpret=interpret or None))
  ref_max, ref_idx = jax.device_get(xla(metric))
  got_max, got_idx = jax.device_get(pallas(metric))
  mismatch = ref_idx != got_idx
  finite = np.isfinite(ref_max)
  max_err = float(np.abs(ref_max[finite] - got_max[finite]).max())
  ties_only = True
  if mismatch.any():  # a different partner is acceptable only as a near tie of the dense scores
    m = matching.normalize(metric)
    a, b = np.asarray(m[:, 0::2], np.float32), np.asarray(m[:, 1::2], np.float32)
    rows = np.argwhere(mismatch)
    chosen = np.einsum("kd,kd->k", a[rows[:, 0], rows[:, 1]], b[rows[:, 0], got_idx[mismatch]])
    ties_only = bool(np.all(chosen >= ref_max[mismatch] - 1e-3))
  t_xla = timed(xla, metric, repeats=repeats)
  t_pallas = timed(pallas, metric, repeats=repeats)
  return dict(n=n, batch=batch, identical=int((~mismatch).sum()), total=int(mismatch.size), ties_only=ties_only,
              max_err=max_err, xla_ms=t_xla * 1e3, pallas_ms=t_pallas * 1e3, speedup=t_xla / t_pallas,
              score_gb=batch * ((n + 1) // 2) * (n // 2) * 4 / 1e9)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--n", type=int, nargs="+", default=[197, 577, 4096])
  parser.add_argument("--gb", type=float, default=1.0, help="size of the dense score matrix per call")
  parser.add_argument("--channels", type=int, default=64, help="metric width (ViT head dim)")
  parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--interpret", action="store_true", help="TPU kernel in interpret mode (CPU smoke run)")
  args = parser.parse_args(argv)
  print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}, dtype {args.dtype}, C = {args.channels}")
  print("| N | B | dense scores (GB) | identical idx | only near ties | max abs err (max) | xla ms | pallas ms | speed-up |")
  print("|---|---|---|---|---|---|---|---|---|")
  for n in args.n:
    r = run(n, args.gb, args.channels, jnp.dtype(args.dtype), args.repeats, args.interpret)
    print(f"| {r['n']} | {r['batch']} | {r['score_gb']:.2f} | {r['identical']}/{r['total']} | {r['ties_only']} | "
          f"{r['max_err']:.1e} | {r['xla_ms']:.3f} | {r['pallas_ms']:.3f} | {r['speedup']:.2f}x |", flush=True)


if __name__ == "__main__":
  main()
