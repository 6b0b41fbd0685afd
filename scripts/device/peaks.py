"""The card's measured ceilings for BENCHMARKS' fraction-of-peak columns: bf16 matmul TFLOP/s and copy GB/s.

  python scripts/device/peaks.py
"""
import jax
import jax.numpy as jnp

from tokax.bench import throughput


def main():
  n = 8192
  a, b = (jax.random.normal(jax.random.key(i), (n, n), jnp.bfloat16) for i in range(2))
  matmul = jax.jit(lambda a, b: a @ b)
  seconds = throughput.median_seconds(matmul, a, b, warmup=3, repeats=20)
  print(f"{jax.devices()[0].device_kind}: bf16 matmul {n}^3: {2 * n ** 3 / seconds / 1e12:.0f} TFLOP/s", flush=True)
  x = jax.random.normal(jax.random.key(2), (512, 1024, 1024), jnp.float32)  # 2 GiB
  copy = jax.jit(lambda x: x * 2.0)  # one read and one write of every byte
  seconds = throughput.median_seconds(copy, x, warmup=3, repeats=20)
  print(f"copy (read + write of 2 GiB): {2 * x.nbytes / seconds / 1e9:.0f} GB/s", flush=True)


if __name__ == "__main__":
  main()
