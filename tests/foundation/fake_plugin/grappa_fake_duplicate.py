"""A broken third-party plugin: registers a clusterer name that another plugin already uses."""

from __future__ import annotations

import pluggy
from grappa_fake_plugin import FarthestPointKMeans

hookimpl = pluggy.HookimplMarker("grappa")


@hookimpl
def register_clusterers(register):
    register(FarthestPointKMeans())
