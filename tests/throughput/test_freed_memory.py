"""Memory that a finished stage freed goes back to the system before the next stage starts."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

#: the scripts' resident memory in MiB, from /proc
RSS_MIB = textwrap.dedent("""
    def rss_mib():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS"):
                return int(line.split()[1]) // 1024
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_freed_heap_memory_goes_back_to_the_system(tmp_path) -> None:
    """After a stage, the heap that its freed tensors leave behind shrinks back (what `run` calls)."""
    script = tmp_path / "freed.py"
    script.write_text(RSS_MIB + textwrap.dedent("""
        import numpy as np
        from grappa_cli.runtime import return_freed_memory

        blocks = [np.ones(8192) for _ in range(4000)]  # 64 KiB each: glibc heap memory, not mmap
        survivors = blocks[::100]  # scattered live blocks: free() alone cannot shrink the heap's top
        del blocks
        before = rss_mib()
        trimmed = return_freed_memory()
        print(before, rss_mib(), trimmed, len(survivors))
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    before, after, trimmed, _ = done.stdout.split()
    assert trimmed == "True"
    assert int(before) - int(after) > 150  # of the 250 MiB freed, the whole pages went back


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_large_blocks_are_reused_not_faulted_in_again(tmp_path) -> None:
    """A training step's large tensors, freed and allocated again, reuse the same memory
    (`reuse_freed_memory`, what `grappa` sets at start) instead of fresh pages from the kernel;
    `return_freed_memory` still hands them back afterwards."""
    script = tmp_path / "reuse.py"
    script.write_text(RSS_MIB + textwrap.dedent("""
        import resource, sys
        import numpy as np
        from grappa_cli.runtime import return_freed_memory, reuse_freed_memory

        set_up = reuse_freed_memory() if sys.argv[1] == "reuse" else None
        faults = []
        for _ in range(5):  # five "steps", each allocating and writing 256 MiB in 64 MiB tensors
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            step = [np.ones(8 << 20) for _ in range(4)]
            del step
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        kept = rss_mib()
        return_freed_memory()
        print(set_up, faults[0], sum(faults[1:]), kept, rss_mib())
    """))
    runs = {}
    for mode in ("default", "reuse"):
        env = {k: v for k, v in os.environ.items() if k != "GRAPPA_REUSE_MEMORY"}
        done = subprocess.run([sys.executable, str(script), mode], capture_output=True, text=True, timeout=120,
                              env=env)
        assert done.returncode == 0, done.stderr
        runs[mode] = done.stdout.split()
    set_up, first, later, kept, trimmed = runs["reuse"]
    assert set_up == "True"
    # (page faults count pages of 4 KiB or, where numpy asks for huge pages, 2 MiB: compare runs, not bytes)
    # glibc's default unmaps each freed 64 MiB block and faults a fresh one in at every later step
    default_first, default_later = int(runs["default"][1]), int(runs["default"][2])
    assert default_later >= 4 * 0.8 * default_first
    # reused: the later steps write into the memory the first one left behind
    assert int(later) <= 0.05 * int(first)
    assert int(kept) >= 256 and int(kept) - int(trimmed) >= 200  # kept between steps, handed back after


def test_reusing_freed_memory_can_be_turned_off(monkeypatch) -> None:
    from grappa_cli.runtime import REUSE_MEMORY_ENV, reuse_freed_memory

    monkeypatch.setenv(REUSE_MEMORY_ENV, "0")
    assert reuse_freed_memory() is False
