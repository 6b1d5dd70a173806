"""Lines the ranks of a ``torchrun`` test print for the test to parse."""

from __future__ import annotations

import sys


def say_line(text: str) -> None:
    """One line to stdout in one write.

    The ranks share one pipe, and under ``PYTHONUNBUFFERED=1`` ``print`` writes the text and its
    newline separately, so two ranks' lines can interleave (``rank 0 grew 4rank 1 grew 4``) and a
    test that counts lines sees one. A single write of a short line is atomic on a pipe.
    """
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
