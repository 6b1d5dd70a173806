"""Make the plugin importable from its source tree when it is not installed.

CI installs the plugin (``pip install plugins/grappa-hkmeans``) before running these
tests; from a bare checkout the module is imported from ``src/`` and only the test that
needs the installed entry point is skipped.
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

try:
    import grappa_hkmeans  # noqa: F401
except ImportError:
    sys.path.insert(0, str(SRC))


@pytest.fixture
def installed_distribution() -> str:
    """The installed version of grappa-hkmeans, or a skip saying how to install it."""
    try:
        return metadata.version("grappa-hkmeans")
    except metadata.PackageNotFoundError:
        pytest.skip("grappa-hkmeans is not installed, so its entry point cannot be checked; "
                    "run `pip install -e plugins/grappa-hkmeans` first")
