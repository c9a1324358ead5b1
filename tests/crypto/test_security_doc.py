"""docs/security.md names tests; each must exist, or the threat table is lying."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NAMED = re.findall(r"`([\w/]+\.py)::(\w+)`", (ROOT / "docs" / "security.md").read_text())


def test_the_threat_table_names_tests() -> None:
    assert len(NAMED) >= 30


@pytest.mark.parametrize(("file", "function"), NAMED)
def test_named_test_exists(file: str, function: str) -> None:
    source = (ROOT / "tests" / file).read_text()
    assert re.search(rf"^def {function}\(", source, re.MULTILINE), f"{file}::{function} missing"
