"""The keys of timm's data config (``Backbone.data_config``) that preprocessing reads, typed.

timm's ``resolve_data_config`` builds the config as a plain dict; :class:`DataConfig` names the
keys this package reads and their types, and :func:`data_config_keys` views any such mapping
through it (no copy, no conversion). Functions take ``Mapping[str, object]`` so callers may
pass timm's dict as it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypedDict, cast


class DataConfig(TypedDict, total=False):
    """timm data config keys (``timm.data.resolve_data_config``)."""

    input_size: tuple[int, int, int]  # (C, H, W); a list when read back from a JSON record
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float
    crop_mode: str


def data_config_keys(data_config: Mapping[str, object]) -> DataConfig:
    """``data_config`` itself, typed as timm's data config."""
    return cast("DataConfig", data_config)
