"""Intra-op threads and OpenMP waits on a CPU, quiet and next to CPU-bound processes.

Each configuration runs in a fresh interpreter (OpenMP reads ``OMP_WAIT_POLICY``,
``GOMP_SPINCOUNT`` and ``OMP_NUM_THREADS`` once, when torch loads) and times EfficientNet-Lite0
(random weights) at the demo's size (96 px, batch 32) for a fixed number of batches, in one of
two modes: ``infer`` (forward passes under ``inference_mode``, what extraction and evaluation
run) or ``train`` (forward and backward to the input with the weights frozen, what training an
adaptor set runs through the backbone)::

    PYTHONPATH=src python benchmarks/bench_threads.py                    # quiet
    PYTHONPATH=src python benchmarks/bench_threads.py --load 2           # 2 busy processes beside it
    PYTHONPATH=src python benchmarks/bench_threads.py --waits passive,spin:20000,active

A wait is ``default`` (libgomp's: spin about 300,000 times, then sleep), ``passive`` (sleep at
once), ``active`` (spin) or ``spin:N`` (spin N times, then sleep: ``GOMP_SPINCOUNT=N``).
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
mode, batches = sys.argv[1], int(sys.argv[2])
model = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0).eval()
model.requires_grad_(False)
x = torch.randn(32, 3, 96, 96)

def step():
    if mode == "infer":
        with torch.inference_mode():
            model(x)
    else:
        inputs = x.clone().requires_grad_(True)
        model(inputs).sum().backward()

step()
start = time.perf_counter(); usage = resource.getrusage(resource.RUSAGE_SELF)
for _ in range(batches):
    step()
wall = time.perf_counter() - start; after = resource.getrusage(resource.RUSAGE_SELF)
cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
print(json.dumps({"img_s": 32 * batches / wall, "wall": wall, "cpu_s": cpu, "threads": torch.get_num_threads()}))
"""

BURN = "while True: pass"

WAIT_NAMES = ("default", "passive", "active", "spin:N")


def wait_environment(wait: str) -> dict[str, str]:
    """The OpenMP variables of one wait setting (see the module docstring)."""
    if wait == "default":
        return {}
    if wait in ("passive", "active"):
        return {"OMP_WAIT_POLICY": wait.upper()}
    if wait.startswith("spin:"):
        return {"GOMP_SPINCOUNT": str(int(wait.split(":", 1)[1]))}
    raise SystemExit(f"Error: unknown wait {wait!r}; use {', '.join(WAIT_NAMES)}")


def run(threads: int, wait: str, mode: str, batches: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update({"OMP_NUM_THREADS": str(threads), **wait_environment(wait)})
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(batches)], env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load", type=int, default=0, help="CPU-bound processes to run beside it")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--waits", default="default,passive", help=f"comma-separated, of {', '.join(WAIT_NAMES)}")
    parser.add_argument("--modes", default="infer,train", help="comma-separated, of infer, train")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    waits = args.waits.split(",")
    for wait in waits:
        wait_environment(wait)  # reject a bad name before anything runs
    burners = [subprocess.Popen([sys.executable, "-c", BURN]) for _ in range(args.load)]
    rows = []
    try:
        time.sleep(1.0 if burners else 0.0)
        for mode in args.modes.split(","):
            for threads in (int(t) for t in args.threads.split(",")):
                for wait in waits:
                    load = os.getloadavg()[0]
                    result = run(threads, wait, mode, args.batches)
                    rows.append({"mode": mode, "threads": threads, "wait": wait, "load1": round(load, 2),
                                 "burners": args.load, **{k: round(v, 2) for k, v in result.items()}})
    finally:
        for proc in burners:
            proc.kill()
            proc.wait()
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"| burners | mode | threads | wait | load avg (1 min) | img/s | CPU-s for {32 * args.batches} img |")
    print("|---:|---|---:|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['burners']} | {r['mode']} | {r['threads']} | {r['wait']} | {r['load1']} | {r['img_s']:.1f} "
              f"| {r['cpu_s']:.1f} |")


if __name__ == "__main__":
    main()
