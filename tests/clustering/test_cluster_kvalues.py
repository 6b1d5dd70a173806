"""Parsing of k specs: lists, binary suffixes, the auto ladder and the errors."""

from __future__ import annotations

import math

import pytest

from grappa_cli.clustering import kvalues
from grappa_cli.errors import GrappaError, UsageError

PAPER_N = 133_339  # MRT training images (section 4.1)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("256,1024,4096", [256, 1024, 4096]),
        ("4096, 256 ,1024", [256, 1024, 4096]),
        ("4k", [4096]),
        ("64k,256", [256, 65536]),
        ("2K,1m", [2048, 1048576]),
        ("1_024", [1024]),
    ],
)
def test_parse_lists_and_suffixes(spec, expected):
    assert kvalues.parse_k_list(spec) == expected


def test_parse_auto_is_case_insensitive():
    assert kvalues.parse_k_list(" Auto ") == "auto"


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("", "no k given"),
        (" , ", "no k given"),
        ("256,,1024", "empty item"),
        ("abc", "'abc'"),
        ("1.5k", "'1.5k'"),
        ("-4", "'-4'"),
        ("4kb", "'4kb'"),
        ("256,256", "k=256"),
        ("4k,4096", "k=4096"),
    ],
)
def test_parse_errors_name_the_bad_value(spec, needle):
    with pytest.raises(UsageError) as exc:
        kvalues.resolve(spec, 10**7, auto_count=8)
    message = str(exc.value)
    assert needle in message
    assert "\n" not in message
    assert message.startswith("--k")


def test_auto_ladder_for_the_paper_scale():
    ladder = kvalues.auto_ladder(PAPER_N, 8)
    # Powers of two from ~n/512 (260) to ~n/2 (66669), like the paper's 256 ... 131072.
    assert ladder == [256, 512, 1024, 2048, 8192, 16384, 32768, 65536]
    assert all(k & (k - 1) == 0 for k in ladder)
    assert ladder[0] == 2 ** round(math.log2(PAPER_N / 512))
    assert ladder[-1] <= PAPER_N / 2 < 2 * ladder[-1]
    assert kvalues.resolve("auto", PAPER_N, auto_count=8) == ladder
    assert kvalues.resolve(None, PAPER_N, auto_count=8) == ladder


@pytest.mark.parametrize("n", [4, 5, 100, 2000, 50_000, 1_000_000])
@pytest.mark.parametrize("count", [1, 3, 8, 20])
def test_auto_ladder_invariants(n, count):
    ladder = kvalues.auto_ladder(n, count, min_k=2)
    assert 1 <= len(ladder) <= count
    assert ladder == sorted(set(ladder))
    assert all(2 <= k <= n / 2 and k & (k - 1) == 0 for k in ladder)
    kvalues.check(ladder, n)  # every value is valid for n


def test_auto_ladder_with_few_powers_returns_all_of_them():
    # n = 100: powers of two from 2 (n/512 < 2) up to 32 (<= 50): 5 distinct values, at most 4 on a small set
    assert kvalues.auto_ladder(100, 3, min_k=2) == [2, 8, 32]
    assert kvalues.auto_ladder(100, 8, min_k=2) == [2, 4, 16, 32]  # exponents 1, 2.33, 3.67, 5 rounded
    assert kvalues.auto_ladder(100, 8) == [16, 32]  # the default floor, 16: exponents 4 and 5 only


def test_small_sets_get_at_most_four_sets():
    # 800 images: exponents 1 (n/512 < 2) ... 8 (256 <= 400); four rungs: 2, 2^3.33, 2^5.67, 2^8
    assert kvalues.auto_ladder(800, 8, min_k=2) == [2, 8, 64, 256]
    assert kvalues.auto_ladder(800, 8) == [16, 32, 128, 256]  # from 16: 2^4, 2^5.33, 2^6.67, 2^8
    assert len(kvalues.auto_ladder(19_999, 8)) == 4
    assert len(kvalues.auto_ladder(20_000, 8)) == 8


def test_auto_needs_at_least_four_images():
    with pytest.raises(GrappaError, match="at least 4"):
        kvalues.auto_ladder(3, 8)


def test_k_must_be_smaller_than_n_and_at_least_two():
    too_big = r"k=1000 is not smaller than the number of training images \(1000\)"
    with pytest.raises(UsageError, match=too_big):
        kvalues.resolve("10,1000", 1000, auto_count=8)
    with pytest.raises(UsageError, match="k=1 is too small"):
        kvalues.resolve("1,10", 1000, auto_count=8)
    assert kvalues.resolve("999", 1000, auto_count=8) == [999]


def test_lists_from_the_config_are_checked_too():
    assert kvalues.resolve([8, 4], 100, auto_count=8, source="grappa.toml [cluster] k") == [4, 8]
    with pytest.raises(UsageError, match=r"^grappa.toml \[cluster\] k: k=4 is listed twice"):
        kvalues.resolve([4, 4], 100, auto_count=8, source="grappa.toml [cluster] k")
    with pytest.raises(UsageError, match="k=128 is not smaller"):
        kvalues.resolve([4, 128], 100, auto_count=8, source="grappa.toml [cluster] k")


def test_auto_ladder_floor_raises_the_coarsest_rung_only_where_n_allows_it():
    # n = 786: exponents round(log2(786/512)) = 1 ... floor(log2(393)) = 8
    assert kvalues.auto_ladder(786, 4, min_k=2) == [2, 8, 64, 256]
    # floor 16 = 2^4: exponents 4, 5.33, 6.67, 8 rounded
    assert kvalues.auto_ladder(786, 4, min_k=16) == [16, 32, 128, 256]
    assert kvalues.auto_ladder(786, 4, min_k=12) == [16, 32, 128, 256]  # rounded up to a power of two
    # at the paper's scale n/512 is already above the floor: the ladder is unchanged
    assert kvalues.auto_ladder(PAPER_N, 8, min_k=16) == kvalues.auto_ladder(PAPER_N, 8, min_k=2)
    # n/2 below the floor: the finest power of two under n/2 alone
    assert kvalues.auto_ladder(20, 4, min_k=16) == [8]
    assert kvalues.resolve("auto", 786, auto_count=4, auto_min_k=16) == [16, 32, 128, 256]
    with pytest.raises(GrappaError, match="auto_min_k"):
        kvalues.auto_ladder(786, 4, min_k=1)
