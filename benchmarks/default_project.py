"""A new user's first project on a CPU: ``grappa init --backbone efficientnet_lite0``, every default kept.

Writes real-image tasks (:mod:`quality_data`, validation classes by default: a choice may be
made on what this measures), creates the project with ``grappa init --backbone
efficientnet_lite0 --task NAME=ROOT ...`` and runs ``grappa run`` in one process, as a user
would. Reports, side by side:

* the whole run's wall time, user and system CPU seconds and the process's peak RSS;
* each stage's seconds (from the run's record) beside the estimate ``grappa run`` announced
  once extraction had measured the backbone (the first estimate a fresh project can have);
* what the defaults chose for this machine and project (``grappa status``'s "Chosen" lines);
* the default fused model against the backbone, RP and MAP@R per task (``reports/table2.csv``).

    PYTHONPATH=src python benchmarks/default_project.py                          # digits, photos, stamps
    PYTHONPATH=src python benchmarks/default_project.py --tasks digits,photos,stamps,clipart
    PYTHONPATH=src python benchmarks/default_project.py --estimate-only          # extraction, then the estimate
    PYTHONPATH=src python benchmarks/default_project.py --set runtime.cpu_amp=true  # one setting changed
    PYTHONPATH=src python benchmarks/default_project.py --tasks digits,stamps,clipart --add stamps

``--add TASK`` measures an increment: the first run leaves TASK out, then ``grappa task add TASK
ROOT --train`` and ``grappa run`` update the project (extraction of the added images, sets trained
on them, the fusion and every result that changed), timed against the first run.

The images are those of the quality harness's ``--size`` (96-pixel files); the backbone reads
them at its own 224 pixels, as a user's project of small images would. ``--work`` keeps the data
between runs; the project directory is made afresh each time.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import quality  # noqa: E402
import quality_data  # noqa: E402
from bench_demo import THREAD_VARIABLES  # noqa: E402


def write_tasks(work: Path, tasks: list[str], size: str, split: str) -> dict[str, Path]:
    """The tasks' image folders under ``work`` (written once; a marker says a folder is whole)."""
    roots = {}
    for name in tasks:
        root = work / f"data-{split}-{size}"
        marker = root / f"{name}.done"
        if not marker.is_file():
            shutil.rmtree(root / name, ignore_errors=True)
            quality_data.write_task(root, name, quality.SIZES[size][name], split=split)
            marker.write_text("ok")
        roots[name] = root / name
    return roots


def grappa(args: list[str]) -> tuple[float, dict[str, float], str]:
    """Run one ``grappa`` command: its wall seconds, its own resource usage and its stdout."""
    with tempfile.TemporaryFile(mode="w+") as out, tempfile.TemporaryFile(mode="w+") as err:
        start = time.perf_counter()
        # grappa's own thread and wait choice, as a user gets it (``run_all.py`` sets one thread for itself)
        env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES} | {"GRAPPA_PROGRESS": "0"}
        proc = subprocess.Popen([sys.executable, "-m", "grappa_cli", *args], stdout=out, stderr=err, text=True,
                                env=env)
        _, status, usage = os.wait4(proc.pid, 0)  # the process's own CPU time and peak RSS
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"grappa {' '.join(args)} failed:\n{err.read()[-3000:]}")
        use = {"user_s": usage.ru_utime, "system_s": usage.ru_stime, "peak_rss_mib": usage.ru_maxrss / 1024}
        return wall, use, out.read()


def default_vs_backbone(project: Path) -> dict[str, dict[str, float]]:
    """Per task and metric: the default fused model minus the backbone (``reports/table2.csv``)."""
    with (project / "reports" / "table2.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    backbone = next(r for r in rows if r["model"] == "backbone")
    default = next(r for r in rows if r["default"] == "true")
    out: dict[str, dict[str, float]] = {"model": {"name": default["label"]}}  # type: ignore[dict-item]
    for key in backbone:
        if ":" in key and backbone[key] and default[key]:
            task, metric = key.split(":")
            out.setdefault(task, {})[metric] = round(float(default[key]) - float(backbone[key]), 2)
            out[task][f"backbone {metric}"] = float(backbone[key])
    return out


def chosen_lines(status_text: str) -> list[str]:
    """The lines of ``grappa status`` under its "Chosen for this project and machine" heading."""
    lines = status_text.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("Chosen"):
            block = []
            for follow in lines[i + 1:]:
                if not follow.strip().startswith("- "):
                    break
                block.append(follow.strip().removeprefix("- "))
            return block
    return []


def apply_overrides(config_path: Path, overrides: dict[str, object]) -> None:
    """Set ``SECTION.KEY`` values in ``grappa.toml`` (what a user's edit of the file does)."""
    from grappa_cli.config import update_file

    def edit(doc) -> None:
        for key, value in overrides.items():
            section, name = key.split(".", 1)
            doc[section][name] = value

    if overrides:
        update_file(config_path, edit)


def measure(work: Path, tasks: list[str], size: str, split: str, *, estimate_only: bool,
            overrides: dict[str, object] | None = None, add: str = "") -> dict:
    roots = write_tasks(work, tasks, size, split)
    project = work / "project"
    shutil.rmtree(project, ignore_errors=True)
    grappa(["init", str(project), "--backbone", "efficientnet_lite0",
            *[arg for name, root in roots.items() if name != add for arg in ("--task", f"{name}={root}")]])
    apply_overrides(project / "grappa.toml", overrides or {})
    images = {name: sum(1 for p in root.rglob("*.png")) for name, root in roots.items() if name != add}
    load_before = os.getloadavg()
    wall, usage, _ = grappa(["-C", str(project), "run", *(["--until", "extract"] if estimate_only else [])])
    _, _, status = grappa(["-C", str(project), "status"])
    record = json.loads((project / ".grappa" / "runs.jsonl").read_text().splitlines()[-1])
    result = {
        "tasks": tasks, "size": size, "split": split, "overrides": overrides or {}, "images": images,
        "cores": len(os.sched_getaffinity(0)),
        "load_before": load_before, "load_after": os.getloadavg(), "wall_s": round(wall, 1),
        **{k: round(v, 1) for k, v in usage.items()},
        "stage_s": {s["stage"]: s.get("seconds") for s in record["stages"]},
        "estimate": record.get("estimate") or {}, "chosen": chosen_lines(status), "status": status,
    }
    if not estimate_only:
        result["default_minus_backbone"] = default_vs_backbone(project)
    if add and not estimate_only:
        result["increment"] = increment(project, add, roots[add])
    return result


def increment(project: Path, name: str, root: Path) -> dict:
    """``grappa task add NAME ROOT --train`` and ``grappa run``: the update's time and what it redid."""
    add_wall, _, _ = grappa(["-C", str(project), "task", "add", name, str(root), "--train"])
    _, _, status = grappa(["-C", str(project), "status"])
    wall, usage, _ = grappa(["-C", str(project), "run"])
    record = json.loads((project / ".grappa" / "runs.jsonl").read_text().splitlines()[-1])
    return {
        "task": name, "images": sum(1 for p in root.rglob("*.png")), "task_add_s": round(add_wall, 1),
        "wall_s": round(wall, 1), **{k: round(v, 1) for k, v in usage.items()},
        "stage_s": {s["stage"]: s.get("seconds") for s in record["stages"]},
        "done": {s["stage"]: len(s.get("done") or []) for s in record["stages"]},
        "estimate": record.get("estimate") or {}, "status_before": status,
        "default_minus_backbone": default_vs_backbone(project),
    }


def markdown(info: dict) -> str:
    """The run as the benchmarks page shows it."""
    minutes, seconds = divmod(info["wall_s"], 60)
    total = sum(info["images"].values())
    lines = [
        f"{total:,} images ({', '.join(f'{k} {v}' for k, v in info['images'].items())}; {info['split']} classes), "
        f"{info['cores']} cores, load {info['load_before'][0]:.2f} at the start"
        + "".join(f", {k} = {json.dumps(v)}" for k, v in info.get("overrides", {}).items()),
        "",
        "| whole run | user / system CPU s | peak RSS |",
        "|---:|---:|---:|",
        f"| **{int(minutes)} min {seconds:.0f} s** | {info.get('user_s', 0):,.0f} / {info.get('system_s', 0):,.0f} | "
        f"{info.get('peak_rss_mib', 0):,.0f} MiB |",
        "",
        "| stage | seconds | announced after extraction |",
        "|---|---:|---:|",
    ]
    announced = info["estimate"].get("seconds", {})
    for stage, secs in info["stage_s"].items():
        guess = announced.get(stage)
        lines.append(f"| {stage} | {secs:,.1f} | {'' if guess is None else f'{guess:,.1f}'} |")
    if announced:
        priced = [s for s in announced if s in info["stage_s"]]
        actual = sum(info["stage_s"][s] for s in priced)
        said = sum(announced[s] for s in priced)
        lines.append(f"| announced stages, sum | {actual:,.1f} | {said:,.1f} ({said / actual:.2f}x) |")
    lines += ["", *(f"* {line}" for line in info["chosen"])]
    lines += comparison(info.get("default_minus_backbone"))
    inc = info.get("increment")
    if inc:
        minutes, seconds = divmod(inc["wall_s"], 60)
        stages = ", ".join(f"{stage} {secs:,.1f} s ({inc['done'].get(stage, 0)} made)"
                           for stage, secs in inc["stage_s"].items())
        lines += ["", f"Increment: `grappa task add {inc['task']} ... --train` ({inc['images']:,} images) and "
                  f"`grappa run`: **{int(minutes)} min {seconds:.0f} s**, {inc['wall_s'] / info['wall_s']:.2f}x the "
                  f"first run; {stages}.", *comparison(inc["default_minus_backbone"])]
    return "\n".join(lines) + "\n"


def comparison(diff: dict | None) -> list[str]:
    """The default model minus the backbone per task, as a table's lines (none without results)."""
    if not diff:
        return []
    tasks = {task: v for task, v in diff.items() if task != "model"}
    return ["", f"| {diff['model']['name']} − backbone | " + " | ".join(tasks) + " |",
            "|---|" + "---:|" * len(tasks),
            "| RP / MAP@R | " + " | ".join(f"{v['r_precision']:+.1f} / {v['map@r']:+.1f}" for v in tasks.values())
            + " |"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="digits,photos,stamps", help="comma-separated quality_data tasks")
    parser.add_argument("--size", choices=tuple(quality.SIZES), default="large")
    parser.add_argument("--split", choices=("val", "test"), default="val")
    parser.add_argument("--work", default="/tmp/grappa-default-project")
    parser.add_argument("--estimate-only", action="store_true", help="stop after extraction; report the estimate")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="change one grappa.toml key after init (values parsed as TOML)")
    parser.add_argument("--add", default="", metavar="TASK",
                        help="leave TASK out of the first run, then add it with --train and run again")
    parser.add_argument("--json", default="")
    parser.add_argument("--md", default="")
    args = parser.parse_args()
    tasks = [t for t in args.tasks.split(",") if t]
    for name in tasks:
        if not quality_data.available(name):
            raise SystemExit(f"Error: task {name!r} needs Debian's {quality_data.PACKAGES.get(name, '?')} package")
    overrides = dict(quality.parse_override(o) for o in args.overrides)
    if args.add and args.add not in tasks:
        raise SystemExit(f"Error: --add {args.add} must be one of --tasks ({args.tasks})")
    info = measure(Path(args.work), tasks, args.size, args.split, estimate_only=args.estimate_only,
                   overrides=overrides, add=args.add)
    text = markdown(info)
    print(info["status"])
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=1))
    if args.md:
        Path(args.md).write_text(text)


if __name__ == "__main__":
    main()
