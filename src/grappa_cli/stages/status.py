"""What each stage has produced, what is stale or missing, and what to run next."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from grappa_cli import artifacts
from grappa_cli.project import Project


@dataclass
class ArtifactStatus:
    """One produced (or expected) artifact."""

    stage: str
    id: str
    state: str  # complete | partial | stale | missing
    detail: str = ""
    stale_inputs: list[str] = field(default_factory=list)


@dataclass
class ProjectStatus:
    root: str
    artifacts: list[ArtifactStatus]
    next_steps: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"root": self.root, "artifacts": [asdict(a) for a in self.artifacts], "next": self.next_steps}


def _state(project: Project, rec: dict[str, Any] | None, store: Any) -> tuple[str, list[str]]:
    if rec is None:
        return "missing", []
    if not rec.get("complete"):
        return "partial", []
    stale = artifacts.stale_inputs(project, rec, store)
    return ("stale" if stale else "complete"), stale


def _detail(rec: dict[str, Any] | None) -> str:
    if not rec:
        return ""
    summary = rec.get("summary") or {}
    return ", ".join(f"{k}={v}" for k, v in summary.items())


def _by_k(name: str) -> tuple[int, str]:
    """``k8`` before ``k32`` before ``k128`` (numeric order), other names after."""
    return (int(name[1:]), name) if name[1:].isdigit() else (1 << 62, name)


def collect(project: Project) -> ProjectStatus:
    """Inspect the store, checkpoints and results of ``project`` (reads metadata only)."""
    config = project.config()
    store = project.store(mode="r") if project.store_path.exists() else None
    items: list[ArtifactStatus] = []

    def add(stage: str, artifact_id: str) -> ArtifactStatus:
        rec = artifacts.record(project, artifact_id, store) if store is not None or not artifact_id.startswith(
            artifacts.STORE_PREFIXES) else None
        state, stale = _state(project, rec, store)
        item = ArtifactStatus(stage, artifact_id, state, _detail(rec), stale)
        items.append(item)
        return item

    add("extract", "features/train")
    if store is not None:
        for task in store.children("features/test"):
            add("extract", f"features/test/{task}")
        for name in sorted(store.children("clusters"), key=_by_k):
            add("cluster", f"clusters/{name}")
        for name in store.children("cache"):
            add("cache", f"cache/{name}")
        for name in store.children("gallery"):
            add("index", f"gallery/{name}")
    for path in sorted(project.adaptors_dir.glob("*.safetensors"), key=lambda p: _by_k(p.stem)):
        add("adapt", f"adaptors/{path.stem}")
    for path in sorted(project.fusion_dir.glob("*.safetensors")):
        add("fuse", f"fusion/{path.stem}")
    for path in sorted(project.results_dir.glob("*/*.json")):
        add("eval", f"results/{path.parent.name}/{path.stem}")

    return ProjectStatus(str(project.root), items, _next_steps(config, items))


def _next_steps(config: Any, items: list[ArtifactStatus]) -> list[str]:
    by_stage: dict[str, list[ArtifactStatus]] = {}
    for item in items:
        by_stage.setdefault(item.stage, []).append(item)
    steps: list[str] = []
    problem = _training_set_problem(config)
    if problem:
        steps.append(problem)
        return steps
    for stage, command in (("extract", "grappa extract"), ("cluster", "grappa cluster"),
                           ("adapt", "grappa adapt"), ("fuse", "grappa fuse"), ("eval", "grappa eval")):
        entries = by_stage.get(stage, [])
        if not entries or any(e.state != "complete" for e in entries):
            bad = [e for e in entries if e.state in ("stale", "partial")]
            reason = f" ({', '.join(f'{e.id} is {e.state}' for e in bad)})" if bad else ""
            steps.append(f"run `{command}`{reason}")
            break
    return steps


def _training_set_problem(config: Any) -> str | None:
    """What to fix first when ``data.train`` cannot be read (no stage can run before that)."""
    from grappa_cli.data.sources import MRT, mrt_members
    from grappa_cli.errors import GrappaError

    if MRT not in config.data.train:
        return None
    try:
        mrt_members(config)
    except GrappaError:
        if not config.tasks:
            return ("add your images: `grappa task add NAME ROOT --train` (a folder of class folders), "
                    "or the six MRT datasets for the paper's setting")
        names = " ".join(config.tasks)
        return (f'data.train is "mrt" but the six MRT tasks are not all configured: train on your tasks with '
                f"`grappa task add NAME ROOT --train --force` or set data.train = [...] ({names}) in grappa.toml")
    return None


def dumps(status: ProjectStatus) -> str:
    return json.dumps(status.to_dict(), indent=2)
