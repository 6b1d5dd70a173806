"""Intra-op threads and OpenMP wait policy on a CPU, quiet and next to CPU-bound processes.

Each configuration runs in a fresh interpreter (OpenMP reads ``OMP_WAIT_POLICY`` and
``OMP_NUM_THREADS`` once, when torch loads) and times EfficientNet-Lite0 (random weights)
forward passes at the demo's size (96 px, batch 32) for a fixed number of batches:

    PYTHONPATH=src python benchmarks/bench_threads.py             # threads 1, 2 x policy default, PASSIVE
    PYTHONPATH=src python benchmarks/bench_threads.py --load 2    # the same with 2 busy processes beside it

Reports images/s (wall) and CPU seconds per configuration, plus the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CHILD = r"""
import json, resource, sys, time, torch, timm
model = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0).eval()
x = torch.randn(32, 3, 96, 96)
with torch.inference_mode():
    model(x)
    start = time.perf_counter(); usage = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(int(sys.argv[1])):
        model(x)
    wall = time.perf_counter() - start; after = resource.getrusage(resource.RUSAGE_SELF)
cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
print(json.dumps({"img_s": 32 * int(sys.argv[1]) / wall, "wall": wall, "cpu_s": cpu,
                  "threads": torch.get_num_threads()}))
"""

BURN = "while True: pass"


def run(threads: int, policy: str | None, batches: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    env.pop("OMP_WAIT_POLICY", None)
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    out = subprocess.run([sys.executable, "-c", CHILD, str(batches)], env=env, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load", type=int, default=0, help="CPU-bound processes to run beside it")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    burners = [subprocess.Popen([sys.executable, "-c", BURN]) for _ in range(args.load)]
    rows = []
    try:
        time.sleep(1.0 if burners else 0.0)
        for threads in (1, 2):
            for policy in (None, "PASSIVE"):
                load = os.getloadavg()[0]
                result = run(threads, policy, args.batches)
                rows.append({"threads": threads, "policy": policy or "default", "load1": round(load, 2),
                             "burners": args.load, **{k: round(v, 2) for k, v in result.items()}})
    finally:
        for proc in burners:
            proc.kill()
            proc.wait()
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"| burners | threads | OMP_WAIT_POLICY | load avg (1 min) | img/s | CPU-s for {32 * args.batches} img |")
    print("|---:|---:|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['burners']} | {r['threads']} | {r['policy']} | {r['load1']} | {r['img_s']:.1f} "
              f"| {r['cpu_s']:.1f} |")


if __name__ == "__main__":
    main()
