"""benchmarks/gpu.py runs (tiny CPU version) with only torch and timm importable besides grappa's own modules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: What the GPU machine may lack: importing any of these must not be needed.
BLOCKED = ("zarr", "pluggy", "rich", "faiss", "sklearn", "typer", "grappa_cli.storage.store", "grappa_cli.plugins")


def test_tiny_gpu_benchmark_writes_its_report(tmp_path) -> None:
    md, js = tmp_path / "gpu.md", tmp_path / "gpu.json"
    blocker = (f"import sys, runpy; sys.modules.update(dict.fromkeys({BLOCKED!r})); "
               f"sys.argv = ['gpu.py', '--tiny', '--out', {str(md)!r}, '--json', {str(js)!r}]; "
               "runpy.run_path('benchmarks/gpu.py', run_name='__main__')")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-c", blocker], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]

    report = md.read_text()
    assert report == proc.stdout  # printed and written alike
    for heading in ("## GPU throughput", "| extract: M, batch 16, eager |", "| adapt: one set",
                    "| fuse: N = 2", "| k = 16 |", "| k = 64 |", "Leave-one-out retrieval",
                    "### Estimated full MRT run", "| **total** |"):
        assert heading in report, heading
    assert "not available" in report  # no faiss here: the torch k-means ran alone

    results = json.loads(js.read_text())
    assert results["environment"]["tiny"] is True
    for key in ("extract", "fused_infer", "adapt"):
        assert results[key]["images_per_s"] > 0 and results[key]["flops_per_image"] > 0, key
    assert results["fusion"]["views_per_s"] == 2 * results["fusion"]["pairs_per_s"] > 0
    assert [r["k"] for r in results["kmeans"]] == [16, 64]
    assert all(r["torch_inertia"] > 0 and "faiss_s" not in r for r in results["kmeans"])
    # more clusters fit the same data better
    assert results["kmeans"][1]["torch_inertia"] < results["kmeans"][0]["torch_inertia"]
    assert 0 < results["eval"]["map_at_r"] <= 1
    # grappa's exact path agrees with the float32 top-R search (no near ties at these sizes)
    assert abs(results["eval"]["exact_map_at_r"] - results["eval"]["map_at_r"]) < 1e-6
    assert results["eval"]["exact_seconds"] > 0
    assert all(seconds > 0 for seconds in results["estimate"].values())
