"""The numbers of clusters k, from the command line or ``grappa.toml``.

Accepted forms:

* a comma list: ``256,1024,4096`` (any order; sorted, duplicates refused);
* binary suffixes: ``4k`` = 4096, ``64k`` = 65536, ``1m`` = 1048576 (``k`` means 1024,
  not 1000, because the paper's ladder is made of powers of two: 256 ... 131072);
* ``auto``: a geometric ladder of ``count`` powers of two from about n/512 up to about
  n/2 for n training images. For the paper's 133,339 MRT images this gives 256 ... 65536
  (the paper goes on to 131072, about one image per cluster; we stop at n/2 so that the
  finest pseudo-label set still groups images in twos on average).

Every k must satisfy 2 <= k < n.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from itertools import pairwise

from grappa_cli.errors import GrappaError, UsageError

SUFFIXES = {"": 1, "k": 1024, "m": 1024 * 1024}
_TOKEN = re.compile(r"^(\d+)([km]?)$", re.IGNORECASE)
AUTO = "auto"


def parse_k_token(token: str, *, source: str = "--k") -> int:
    """``"4k"`` -> 4096; anything else than digits with an optional k/m suffix is refused."""
    match = _TOKEN.match(token.strip().replace("_", ""))
    if not match:
        raise UsageError(
            f"{source}: {token.strip()!r} is not a number of clusters",
            hint="use integers such as 256,1024 or suffixes 4k (=4096), 64k (=65536), or auto",
        )
    return int(match.group(1)) * SUFFIXES[match.group(2).lower()]


def parse_k_list(spec: str, *, source: str = "--k") -> list[int] | str:
    """A comma list (sorted, checked for duplicates), or the string ``"auto"``."""
    text = spec.strip()
    if text.lower() == AUTO:
        return AUTO
    tokens = [t for t in text.split(",")]
    if not text or all(not t.strip() for t in tokens):
        raise UsageError(f"{source}: no k given", hint="e.g. --k 256,1024,4096 or --k auto")
    if any(not t.strip() for t in tokens):
        raise UsageError(f"{source}: empty item in {spec!r}", hint="separate k values by single commas")
    values = [parse_k_token(t, source=source) for t in tokens]
    seen: set[int] = set()
    for token, value in zip(tokens, values, strict=True):
        if value in seen:
            raise UsageError(f"{source}: k={value} ({token.strip()!r}) is listed twice",
                             hint="list each k once")
        seen.add(value)
    return sorted(values)


#: The smallest k ``auto`` picks (``[cluster] auto_min_k``): on the quality harness's validation
#: classes, a ladder starting at 16 instead of 2 raised Grappa-N by 0.4 RP (docs/benchmarks.md).
DEFAULT_MIN_K = 16

#: Below this many training images ``auto`` makes at most ``SMALL_SET_COUNT`` sets.
SMALL_SET_IMAGES = 20_000
SMALL_SET_COUNT = 4


def auto_ladder(n: int, count: int, min_k: int = DEFAULT_MIN_K) -> list[int]:
    """``count`` powers of two spread geometrically from about n/512 to about n/2 (deduplicated).

    Below ``SMALL_SET_IMAGES`` training images the ladder has at most ``SMALL_SET_COUNT`` rungs:
    a few thousand images hold few distinct granularities, and each set costs a training run
    (on a CPU, minutes); the paper's eight sets are for its 133k images.

    Exponents run from round(log2(n/512)) to floor(log2(n/2)), evenly spaced and rounded; with
    fewer distinct powers of two than ``count`` in that range, all of them are returned. The
    lowest rung is at least ``min_k`` (rounded up to a power of two) while n/2 allows it: on a
    few hundred images n/512 would be k = 2, a split in two that carries one bit about an
    image, and training a set on it pulls every embedding towards one of two prototypes.
    """
    if n < 4:
        raise GrappaError(f"`auto` k needs at least 4 training images, got {n}", hint="extract more images")
    if count < 1:
        raise GrappaError(f"`auto` k needs a positive count, got {count}",
                          hint="set [cluster] auto_count >= 1")
    if min_k < 2:
        raise GrappaError(f"`auto` k needs a smallest k of at least 2, got {min_k}",
                          hint="set [cluster] auto_min_k >= 2")
    if n < SMALL_SET_IMAGES:
        count = min(count, SMALL_SET_COUNT)
    hi = math.floor(math.log2(n / 2))
    lo = min(max(math.ceil(math.log2(min_k)), round(math.log2(n / 512))), hi)
    if count == 1 or lo == hi:
        exponents = [hi]
    else:
        step = (hi - lo) / (count - 1)
        exponents = [round(lo + i * step) for i in range(count)]
    return sorted({2**e for e in exponents})


def resolve(
    spec: str | Sequence[int] | None, n: int, *, auto_count: int, source: str = "--k",
    auto_min_k: int = DEFAULT_MIN_K,
) -> list[int]:
    """The k values to run for ``n`` training images: parsed, expanded and validated.

    ``spec`` is a CLI string, a list from ``grappa.toml``, or ``"auto"``. Errors name the
    offending value and where it came from (``source``).
    """
    if spec is None:
        spec = AUTO
    values: list[int] | str
    if isinstance(spec, str):
        values = parse_k_list(spec, source=source)
    else:
        values = sorted(int(v) for v in spec)
        if not values:
            raise UsageError(f"{source}: no k given", hint="e.g. 256,1024,4096 or auto")
        dup = next((a for a, b in pairwise(values) if a == b), None)
        if dup is not None:
            raise UsageError(f"{source}: k={dup} is listed twice", hint="list each k once")
    if isinstance(values, str):  # AUTO, the only string parse_k_list returns
        return auto_ladder(n, auto_count, auto_min_k)
    check(values, n, source=source)
    return list(values)


def check(values: Sequence[int], n: int, *, source: str = "--k") -> None:
    """Every k must split the n training images into at least 2 and fewer than n clusters."""
    for k in values:
        if k < 2:
            raise UsageError(f"{source}: k={k} is too small", hint="every k must be at least 2")
        if k >= n:
            raise UsageError(
                f"{source}: k={k} is not smaller than the number of training images ({n})",
                hint=f"choose k < {n}, e.g. `--k auto`",
            )
