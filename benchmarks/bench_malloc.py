"""Large blocks from fresh pages (glibc's default) against freed blocks reused (``runtime.reuse_freed_memory``).

Each measurement is its own process (the allocator setting is per process and set once):
forward and backward of a frozen timm CNN (EfficientNet-Lite0, random weights) on one batch,
the gradient asked for the input only, as adaptor training asks the frozen backbone. It prints
the time per step, user and system CPU seconds, minor page faults and peak RSS, and a checksum
of the input gradient, which must be the same in both settings (the allocator moves memory, not
arithmetic). The two settings alternate, ``--repeats`` times each, so load drifts hit both.

    PYTHONPATH=src python benchmarks/bench_malloc.py                       # 224 px, batch 60, 5 steps
    PYTHONPATH=src python benchmarks/bench_malloc.py --size 96 --batch 32 --steps 20 --md malloc.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
mode, size, batch, steps, model_name = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
from grappa_cli.runtime import reuse_freed_memory
if mode == "reuse":
    assert reuse_freed_memory(), "glibc's mallopt is not available here"
import torch, timm
torch.manual_seed(0)
model = timm.create_model(model_name, pretrained=False).eval().to(memory_format=torch.channels_last)
for p in model.parameters():
    p.requires_grad_(False)
x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last).requires_grad_(True)

def step():
    model.forward_features(x).float().pow(2).mean().backward()
    grad = x.grad.clone()
    x.grad = None
    return grad

step()  # warm-up: the first step allocates everything once in both settings
before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
for _ in range(steps):
    grad = step()
wall = time.perf_counter() - start
after = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"mode": mode, "ms_per_step": 1000 * wall / steps, "user_s": after.ru_utime - before.ru_utime,
                  "sys_s": after.ru_stime - before.ru_stime, "minor_faults": after.ru_minflt - before.ru_minflt,
                  "max_rss_mib": after.ru_maxrss / 1024, "grad_sum": float(grad.double().sum())}))
"""


def measure(mode: str, args: argparse.Namespace) -> dict:
    from grappa_cli.runtime import cpu_thread_settings

    env = {**os.environ, **cpu_thread_settings()}
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(args.size), str(args.batch), str(args.steps),
                          args.model], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=60)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--md", help="also write the table to this Markdown file")
    args = parser.parse_args()
    runs = [measure(mode, args) for _ in range(args.repeats) for mode in ("default", "reuse")]
    if len({r["grad_sum"] for r in runs}) != 1:
        raise SystemExit(f"the gradients differ between runs: {[r['grad_sum'] for r in runs]}")
    lines = [f"{args.model}, {args.size} px, batch {args.batch}, {args.steps} steps per run, load average "
             f"{os.getloadavg()[0]:.2f} at the end; the input gradient is identical in every run", "",
             "| allocator | ms per step | user s | system s | minor page faults | peak RSS (MiB) |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in runs:
        name = "glibc default (large blocks mmap'd)" if r["mode"] == "default" else "reuse_freed_memory()"
        lines.append(f"| {name} | {r['ms_per_step']:.0f} | {r['user_s']:.1f} | {r['sys_s']:.1f} | "
                     f"{r['minor_faults']:,} | {r['max_rss_mib']:.0f} |")
    text = "\n".join(lines)
    print(text)
    if args.md:
        with open(args.md, "w") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
