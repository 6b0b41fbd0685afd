r"""Where a jitted function's device time goes: the top kernels of a jax.profiler trace.

  from tokax.bench import profile
  rows = profile.kernel_table(step, args, steps=5)   # [{"name", "ms_per_call", "count", "share"}, ...]
  print(profile.markdown(rows))

Runs `fn(*args)` once to compile, then `steps` times under jax.profiler.trace, reads the trace back
with jax's ProfileData, and sums event durations by name over the device planes (on a GPU the
per-stream kernel lines; XLA's op and module summary lines are skipped so nothing counts twice).
No tensorboard or nsys is needed, only jax.
"""
from __future__ import annotations

import collections
import glob
import os
import tempfile
from typing import Any, Callable

import jax

# Lines of a device plane that summarise other lines (their events overlap the kernels').
SUMMARY_LINES = ("XLA Modules", "XLA Ops", "Steps", "XLA TraceMe", "Source code", "Framework Ops")


def _device_events(path: str):
  from jax._src.profiler import ProfileData
  data = ProfileData.from_file(path)
  for plane in data.planes:
    if not plane.name.startswith("/device:"):
      continue
    for line in plane.lines:
      if any(line.name.startswith(s) for s in SUMMARY_LINES):
        continue
      for event in line.events:
        yield event.name, event.duration_ns


def kernel_table(fn: Callable[..., Any], args: tuple, *, steps: int = 5, top: int = 25) -> list[dict]:
  """The `top` kernels by total device time over `steps` calls of fn(*args), per call.

  Returns:
    rows sorted by time: name, ms_per_call, count (per call), share (of all device kernel time); and a
    last row "total" with the summed device time per call.
  """
  jax.block_until_ready(fn(*args))
  directory = tempfile.mkdtemp(prefix="tokax_profile_")
  with jax.profiler.trace(directory):
    for _ in range(steps):
      jax.block_until_ready(fn(*args))
  paths = glob.glob(os.path.join(directory, "**", "*.xplane.pb"), recursive=True)
  if not paths:
    raise RuntimeError(f"kernel_table: jax.profiler.trace wrote no .xplane.pb under {directory}")
  events = list(_device_events(paths[0]))
  if not events:  # say what the trace held instead of an empty table
    from jax._src.profiler import ProfileData
    planes = {p.name: [l.name for l in p.lines] for p in ProfileData.from_file(paths[0]).planes}
    print(f"kernel_table: no device kernel events; planes and lines: {planes}", flush=True)
  return aggregate(events, steps=steps, top=top)


def aggregate(events: list[tuple[str, float]], *, steps: int, top: int) -> list[dict]:
  """(name, duration ns) events of `steps` calls -> the `top` names by total time, per call, and a "total" row."""
  total_ns = collections.Counter()
  count = collections.Counter()
  for name, ns in events:
    total_ns[name] += ns
    count[name] += 1
  all_ns = sum(total_ns.values())
  rows = [dict(name=name, ms_per_call=ns / steps / 1e6, count=count[name] / steps, share=ns / max(all_ns, 1))
          for name, ns in total_ns.most_common(top)]
  rows.append(dict(name="total", ms_per_call=all_ns / steps / 1e6, count=sum(count.values()) / steps, share=1.0))
  return rows


def markdown(rows: list[dict], width: int = 90) -> str:
  lines = ["| kernel | ms / call | launches / call | share |", "|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['name'][:width]} | {r['ms_per_call']:.3f} | {r['count']:.0f} | {100 * r['share']:.1f}% |")
  return "\n".join(lines)
