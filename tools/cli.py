"""The ``l2-session`` command line."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("l2-session", argv if argv is not None else sys.argv[1:])
    return 0
