"""The README's table from measure.py's JSON files:

  python experiments/fsdp_memory/table.py experiments/fsdp_memory/results/*.json
"""

from __future__ import annotations

import json
import sys

GIB = 2 ** 30
# Nominal memory of common accelerators (V100 16 GB, A100 40 GB, A100/H100 80 GB), in GiB:
# the vendors' "GB" for HBM are GiB.
CAPACITIES_GIB = (16, 40, 80)


def rows(results: list[dict]) -> list[str]:
  results = sorted(results, key=lambda r: (r["dtype"] != "float32", r["remat"] if "remat" in r
                                           else False, r["per_device_batch"],
                                           r["strategy"] != "data_parallel"))
  head = ("| per-device batch (global x accum.) | dtype | strategy | params + opt. state + EMA per device (exact) "
          "| XLA argument | XLA temp | XLA peak estimate | "
          + " | ".join(f"fits {c} GiB" for c in CAPACITIES_GIB) + " | compile | host peak RSS |")
  out = [head, "|" + "---|" * (head.count("|") - 1)]
  for r in results:
    s, x = r["state_bytes_per_device"], r["xla_memory_per_device"]
    fits = ["yes" if x["peak_estimate"] <= c * GIB else "no" for c in CAPACITIES_GIB]
    out.append(
        f"| {r['per_device_batch']} ({r['global_batch']} x {r['grad_accum_steps']}) "
        f"| {r['dtype']}{' + remat' if r.get('remat') else ''} | {r['strategy']} | {s['total'] / GIB:.2f} GiB "
        f"| {x['argument'] / GIB:.2f} GiB | {x['temp'] / GIB:.2f} GiB "
        f"| **{x['peak_estimate'] / GIB:.2f} GiB** | " + " | ".join(fits)
        + f" | {r['compile_s']:.0f} s | {r['host']['peak_rss_bytes'] / GIB:.1f} GiB |")
  return out


def main(paths: list[str]) -> None:
  results = []
  for path in paths:
    with open(path) as f:
      results.append(json.load(f))
  print("\n".join(rows(results)))


if __name__ == "__main__":
  main(sys.argv[1:])
