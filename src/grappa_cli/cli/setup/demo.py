"""``grappa demo``: the whole pipeline on bundled images, in a few minutes on a laptop CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from grappa_cli.cli.common import DeviceOption, Flag


def demo(
    directory: Annotated[Path, typer.Option("--dir", help="Where to create the demo project.")] = Path(
        "grappa-demo"),
    size: Annotated[str, typer.Option(help="default, or tiny (a quick check of the mechanics).")] = "default",
    backbone: Annotated[str, typer.Option(help="auto (pretrained EfficientNet-Lite0 when the offline extra is "
                                          "installed, else a small random ViT), efficientnet_lite0 or tiny-vit."
                                          )] = "auto",
    force: Annotated[bool, Flag("--force", help="Rebuild the demo project from scratch.")] = False,
    device: DeviceOption = None,
) -> None:
    """Create a project on bundled images (digits, photos, shapes), run every stage and print Table 2."""
    from grappa_cli.cli.pipeline.announce import RunAnnouncer
    from grappa_cli.cli.tables import print_table2
    from grappa_cli.console import PipelineReporter, err, out
    from grappa_cli.errors import UsageError
    from grappa_cli.pipeline.run import STAGES, run_pipeline
    from grappa_cli.reporting.report import ReportOptions, current_report
    from grappa_cli.setup.demo import SETTINGS, backbone_settings, prepare

    if size not in SETTINGS:
        raise UsageError(f"--size must be one of {', '.join(SETTINGS)} (got {size!r})")
    _, described = backbone_settings(backbone)
    err.print(f"Demo project in {directory.resolve()}; backbone: {described}.", highlight=False)
    project = prepare(directory, scale=size, backbone=backbone, force=force)
    announce = RunAnnouncer(project, device)
    with project.lock("demo"), PipelineReporter(len(STAGES)) as view:
        outcome = run_pipeline(project, device=device, reporter=view, on_plan=announce.before,
                               on_extracted=announce.after_extract)
    project.record_run("demo", **outcome.to_dict(), estimate=announce.record())
    # `grappa run` wrote the report (or found it current): print its table, do not render it again
    result = current_report(project, ReportOptions(device=device))
    print_table2(out, result.table, "Demo results (percent): RP = R-Precision, mAP = MAP@R")
    for path in result.files:
        out.print(f"wrote {path}", highlight=False)
    # one command per line: each line pastes into a shell as it is
    out.print(f"Explore it:\n  grappa -C {directory} status\n"
              f"  grappa -C {directory} fuse --strategy neighbor && grappa -C {directory} run\n"
              f"  grappa -C {directory} fuse --strategy neighbor --inspect\n"
              f"  grappa -C {directory} fuse --strategy route && grappa -C {directory} run", highlight=False,
              markup=False)
