"""The README's "Using it on your data" section, run literally (only the example paths replaced)."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import make_image_folder

README = Path(__file__).resolve().parents[2] / "README.md"


def section_blocks(title: str) -> list[tuple[str, str]]:
    """The fenced code blocks (language, text) of one ``## title`` section of the README."""
    text = README.read_text()
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    section = text[start: end if end > 0 else None]
    return re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S)


def grappa_shim(folder: Path) -> Path:
    """A ``grappa`` on PATH that runs this interpreter's grappa_cli (the installed script's job)."""
    folder.mkdir()
    shim = folder / "grappa"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m grappa_cli "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    return folder


@pytest.mark.slow
def test_readme_own_data_commands_run_literally(tmp_path: Path) -> None:
    blocks = section_blocks("Using it on your data")
    bash = [code for lang, code in blocks if lang == "bash"]
    python = [code for lang, code in blocks if lang == "python"]
    assert len(bash) == 2 and len(python) == 1
    images = make_image_folder(tmp_path / "my_images", n_classes=4, per_class=4)
    gallery = make_image_folder(tmp_path / "my_gallery", n_classes=2, per_class=2, seed=5)
    query = next(gallery.rglob("*.png"))
    replace = {"/data/my_images": str(images), "/data/my_gallery": str(gallery), "/data/query.jpg": str(query)}
    script = "\n".join(bash)
    for placeholder, real in replace.items():
        assert placeholder in script, placeholder
        script = script.replace(placeholder, real)
    env = {**os.environ, "PATH": f"{grappa_shim(tmp_path / 'bin')}{os.pathsep}{os.environ['PATH']}",
           "GRAPPA_PROGRESS": "0", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(["bash", "-e", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    project = tmp_path / "myproj"
    assert (project / "model.safetensors").is_file()
    # `grappa fuse` made Grappa-avg (the default model); on a CPU, `grappa run`'s "auto" strategies add nothing
    assert "Grappa-avg" in done.stdout and "fused:neighbor" not in done.stdout
    # the search printed the gallery image it was given first (itself at similarity 1)
    assert query.name in done.stdout

    code = python[0] + "\nimport torch\nprint(model(torch.zeros(1, *model.data_config['input_size'])).shape)\n"
    run = subprocess.run([sys.executable, "-c", code], cwd=project, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "torch.Size([1, 1280])"
