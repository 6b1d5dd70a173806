"""The default-project benchmark (benchmarks/default_project.py): what it reads off a finished run."""

from __future__ import annotations

import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import default_project  # noqa: E402

TABLE = """kind,section,label,model,uses_labels,default,digits:r_precision,digits:map@r,stamps:r_precision,stamps:map@r
model,backbone,M (backbone),backbone,false,false,80.0000,70.5000,50.0000,40.0000
model,single,M + P1 (k16),adaptor:k16,false,false,81.0000,71.0000,49.0000,39.0000
model,fused,Grappa-avg,fused:avg,false,true,82.2500,72.0000,48.4000,40.2500
"""


def test_the_default_model_is_compared_with_the_backbone_per_task_and_metric(tmp_path: Path) -> None:
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "table2.csv").write_text(TABLE)
    diff = default_project.default_vs_backbone(tmp_path)
    assert diff["model"] == {"name": "Grappa-avg"}  # the row marked default, not the best or the last single set
    assert diff["digits"] == {"r_precision": 2.25, "backbone r_precision": 80.0, "map@r": 1.5, "backbone map@r": 70.5}
    assert diff["stamps"]["r_precision"] == -1.6 and diff["stamps"]["map@r"] == 0.25


def test_the_chosen_settings_are_the_status_lines_under_their_heading() -> None:
    status = """Project /tmp/p
Chosen for this project and machine:
  - [cluster] k = "auto" for 196 training images: 16, 32, 64
  - [adapt] each set trains 90 steps
Remaining work: about 16 min
"""
    assert default_project.chosen_lines(status) == ['[cluster] k = "auto" for 196 training images: 16, 32, 64',
                                                    "[adapt] each set trains 90 steps"]
    assert default_project.chosen_lines("Project /tmp/p\nNothing chosen\n") == []


def test_the_increment_is_reported_against_the_first_run() -> None:
    diff = {"model": {"name": "Grappa-avg"}, "digits": {"r_precision": 1.26, "map@r": 2.11}}
    info = {"images": {"digits": 850}, "split": "val", "cores": 2, "load_before": (0.5, 0.4, 0.3),
            "wall_s": 1200.0, "user_s": 2000.0, "system_s": 100.0, "peak_rss_mib": 3000.0,
            "stage_s": {"adapt": 1000.0}, "estimate": {}, "chosen": [], "default_minus_backbone": diff,
            "increment": {"task": "stamps", "images": 289, "wall_s": 300.0,
                          "stage_s": {"extract": 10.0, "adapt": 250.0}, "done": {"extract": 2, "adapt": 2},
                          "default_minus_backbone": diff}}
    text = default_project.markdown(info)
    assert "**5 min 0 s**, 0.25x the first run; extract 10.0 s (2 made), adapt 250.0 s (2 made)." in text
    assert text.count("| RP / MAP@R | +1.3 / +2.1 |") == 2  # after the first run and after the increment
