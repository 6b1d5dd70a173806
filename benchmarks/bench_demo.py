"""The demo, stage by stage: wall time, CPU seconds and peak memory, quiet and under CPU load.

Prepares the demo project (its bundled images and settings, as ``grappa demo`` does), then
runs each stage as its own ``grappa`` process, exactly as a user would:

    PYTHONPATH=src python benchmarks/bench_demo.py                 # as the machine is
    PYTHONPATH=src python benchmarks/bench_demo.py --load 2        # with 2 CPU-bound processes beside it

Per stage it reports the wall time, the CPU seconds of the stage and every process it
started (``RUSAGE_CHILDREN``), the peak resident memory of the stage's process
(``ru_maxrss`` from ``wait4``) and the peak of the whole process tree (sampled from ``/proc`` every 0.1 s,
workers included), plus the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BURN = "while True: pass"
PAGE = os.sysconf("SC_PAGE_SIZE")


def tree_rss(root: int) -> int:
    """Bytes resident in ``root`` and all its descendants now."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(entry), int(fields[1])
        children.setdefault(ppid, []).append(pid)
        rss[pid] = int(fields[21]) * PAGE
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack += children.get(pid, [])
    return total


def run_stage(args: list[str], env: dict[str, str]) -> dict:
    with tempfile.TemporaryFile(mode="w+") as log:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "grappa_cli", *args], env=env, stdout=subprocess.DEVNULL,
                                stderr=log, text=True)
        peak = 0
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, tree_rss(proc.pid))
                time.sleep(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, own = os.wait4(proc.pid, 0)  # the stage process's own rusage (its peak RSS)
        proc.returncode = os.waitstatus_to_exitcode(status)
        done.set()
        sampler.join()
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            log.seek(0)
            raise SystemExit(f"grappa {' '.join(args)} failed:\n{log.read()[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"stage": " ".join(args[2:]), "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
            "max_process_rss_mib": round(own.ru_maxrss / 1024), "tree_rss_mib": round(peak / 2**20)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load", type=int, default=0, help="CPU-bound processes to run beside it")
    parser.add_argument("--dir", type=Path, default=None, help="where to build the project (default: a temp dir)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from grappa_cli.setup.demo import prepare

    workdir = Path(tempfile.mkdtemp(prefix="bench-demo-")) if args.dir is None else args.dir
    project = prepare(workdir / "demo", force=True)
    strategies = list(project.config().fuse.strategies)
    env = {**os.environ, "GRAPPA_PROGRESS": "0"}
    stages = [["extract"], ["cluster"], ["adapt"], *[["fuse", "--strategy", s] for s in strategies], ["eval"],
              ["report"]]
    burners = [subprocess.Popen([sys.executable, "-c", BURN]) for _ in range(args.load)]
    rows = []
    load_before = os.getloadavg()
    try:
        time.sleep(1.0 if burners else 0.0)
        for stage in stages:
            rows.append(run_stage(["-C", str(project.root), *stage], env))
    finally:
        for proc in burners:
            proc.kill()
            proc.wait()
    load_after = os.getloadavg()
    total = {"stage": "total", "wall_s": round(sum(r["wall_s"] for r in rows), 1),
             "cpu_s": round(sum(r["cpu_s"] for r in rows), 1),
             "max_process_rss_mib": max(r["max_process_rss_mib"] for r in rows),
             "tree_rss_mib": max(r["tree_rss_mib"] for r in rows)}
    info = {"burners": args.load, "cores": len(os.sched_getaffinity(0)), "load_before": load_before,
            "load_after": load_after, "rows": [*rows, total]}
    if args.json:
        print(json.dumps(info, indent=2))
        return
    print(f"burners {args.load}; usable cores {info['cores']}; load average before "
          f"{', '.join(f'{v:.2f}' for v in load_before)}, after {', '.join(f'{v:.2f}' for v in load_after)}")
    print("| stage | wall s | CPU s | peak RSS, stage process (MiB) | peak RSS, process tree (MiB) |")
    print("|---|---:|---:|---:|---:|")
    for r in info["rows"]:
        print(f"| {r['stage']} | {r['wall_s']} | {r['cpu_s']} | {r['max_process_rss_mib']} | {r['tree_rss_mib']} |")


if __name__ == "__main__":
    main()
