"""``grappa demo``: a small project on data that ships with the install, run end to end.

The demo writes three retrieval tasks of different granularity as ordinary image folders
(``grappa_cli.setup.demo_data``), configures a project for them and runs the whole pipeline
(``grappa run``). The backbone is EfficientNet-Lite0 with its ImageNet weights when the
``offline`` extra is installed (the weights ship inside that package, so nothing is
downloaded), otherwise a small random ViT: the pipeline then runs the same way, but its
numbers only show the mechanics.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from grappa_cli.errors import GrappaError
from grappa_cli.project import Project

if TYPE_CHECKING:
    from tomlkit import TOMLDocument

MARKER = "demo.json"


@dataclass(frozen=True)
class DemoSettings:
    """Pipeline sizes of one demo scale."""

    k: tuple[int, ...]
    adapt_epochs: int
    fuse_epochs: int
    batch_size: int
    #: optimizer steps per adaptor set / fusion at least (``[adapt]``/``[fuse]`` ``min_steps``)
    adapt_min_steps: int = 0
    fuse_min_steps: int = 0


SETTINGS = {
    # two epochs of the 488 training images: 30 steps a set, the demo's minute on two cores; 90
    # steps (min_steps = 100) add about 0.6-1 RP on each task and a minute (docs/benchmarks.md)
    "default": DemoSettings(k=(8, 32, 128), adapt_epochs=2, fuse_epochs=2, batch_size=32,
                            adapt_min_steps=0, fuse_min_steps=100),
    "tiny": DemoSettings(k=(4, 16), adapt_epochs=1, fuse_epochs=2, batch_size=16),
}


def pretrained_available() -> bool:
    """Whether the offline EfficientNet-Lite0 weights are installed."""
    from grappa_cli.model.backbones.packaged import packaged_weights

    weights = packaged_weights("efficientnet_lite0")
    if weights is None:
        return False
    try:
        weights.path()
    except GrappaError:
        return False
    return True


def backbone_settings(choice: str = "auto") -> tuple[dict[str, object], str]:
    """``[backbone]`` values for the demo and a sentence saying what was chosen."""
    lite0 = {"name": "efficientnet_lite0", "pretrained": True, "input_size": 96}
    vit = {"name": "vit_small_patch16_224", "pretrained": False,
           "kwargs": {"img_size": 64, "patch_size": 8, "embed_dim": 128, "depth": 4, "num_heads": 4}}
    if choice == "efficientnet_lite0" or (choice == "auto" and pretrained_available()):
        return lite0, "EfficientNet-Lite0 with its ImageNet weights (from the offline extra), 96 px"
    if choice in ("auto", "tiny-vit"):
        return vit, ("a small random ViT (install `grappa-cli[offline]` for a pretrained backbone; "
                     "random weights only show the mechanics)")
    raise GrappaError(f"unknown demo backbone {choice!r}", hint="use auto, efficientnet_lite0 or tiny-vit")


def prepare(directory: Path, *, scale: str = "default", backbone: str = "auto", force: bool = False) -> Project:
    """Write the demo data and project (or reuse an existing demo project in ``directory``)."""
    from grappa_cli.config import update_file
    from grappa_cli.setup.demo_data import SCALES, write_demo_datasets
    from grappa_cli.setup.init import create_project

    root = directory.expanduser().resolve()
    marker = root / ".grappa" / MARKER
    if root.exists() and any(root.iterdir()):
        if not marker.is_file():
            raise GrappaError(f"{root} exists and is not a grappa demo", hint="choose another --dir")
        recorded = json.loads(marker.read_text())
        if not force and recorded.get("scale") == scale and recorded.get("backbone") == backbone:
            return Project(root)
        shutil.rmtree(root)
    settings = SETTINGS[scale]
    values, _ = backbone_settings(backbone)
    counts = write_demo_datasets(root / "data", SCALES[scale])
    project = create_project(root)

    def configure(doc: TOMLDocument) -> None:
        import tomlkit

        for key, value in values.items():
            if isinstance(value, dict):
                table = tomlkit.inline_table()
                table.update(value)
                value = table
            doc["backbone"][key] = value
        doc["data"]["train"] = list(counts)
        doc["data"]["batch_size"] = 64
        doc["data"]["num_workers"] = 0
        doc["data"]["chunk_size"] = 256
        doc["data"]["feature_dtype"] = "float32"
        doc["cluster"]["k"] = list(settings.k)
        doc["adapt"]["bottleneck"] = 32
        doc["adapt"]["epochs"] = settings.adapt_epochs
        doc["adapt"]["min_steps"] = settings.adapt_min_steps
        doc["fuse"]["min_steps"] = settings.fuse_min_steps
        doc["adapt"]["batch_size"] = settings.batch_size
        doc["fuse"]["epochs"] = settings.fuse_epochs
        doc["fuse"]["batch_size"] = 2 * settings.batch_size
        doc["fuse"]["projector"] = [256, 256]
        doc["eval"]["tasks"] = list(counts)
        tasks = tomlkit.table(is_super_table=True)
        for name in counts:
            entry = tomlkit.table()
            entry["type"] = "imagefolder"
            entry["root"] = str(root / "data" / name)
            tasks[name] = entry
        doc["tasks"] = tasks

    update_file(project.config_path, configure)
    marker.write_text(json.dumps({"scale": scale, "backbone": backbone, "images": counts}))
    return project
