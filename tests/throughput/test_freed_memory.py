"""Memory that a finished stage freed goes back to the system before the next stage starts."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_freed_heap_memory_goes_back_to_the_system(tmp_path) -> None:
    """After a stage, the heap that its freed tensors leave behind shrinks back (what `run` calls)."""
    script = tmp_path / "freed.py"
    script.write_text(textwrap.dedent("""
        import numpy as np
        from grappa_cli.runtime import return_freed_memory

        def rss_mib():
            for line in open("/proc/self/status"):
                if line.startswith("VmRSS"):
                    return int(line.split()[1]) // 1024

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
