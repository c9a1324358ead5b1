"""The feature files are SPEC-018 §2, verbatim. If either drifts, this fails.

The spec lives outside the repository (``../shared/spec``); a copy is kept in docs/spec so
that a clean clone can still check the feature files. Where the shared spec exists, the copy
must equal it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SPEC_NAME = "SPEC-018-l2-session-manager.md"
COPY = ROOT / "docs" / "spec" / SPEC_NAME
SHARED = ROOT.parent / "shared" / "spec" / SPEC_NAME
FEATURES = {
    "Session Establishment": "session_establishment.feature",
    "Session Maintenance": "session_maintenance.feature",
    "Degradation and Recovery": "degradation_and_recovery.feature",
}


def gherkin_blocks(spec_text: str) -> dict[str, str]:
    blocks = re.findall(r"```gherkin\n(.*?)```", spec_text, re.S)
    return {re.match(r"Feature: (.+)", b).group(1): b for b in blocks}  # type: ignore[union-attr]


def test_spec_section_2_has_exactly_the_three_features() -> None:
    assert set(gherkin_blocks(COPY.read_text(encoding="utf-8"))) == set(FEATURES)


@pytest.mark.parametrize(("feature", "filename"), FEATURES.items())
def test_feature_file_is_the_spec_text_verbatim(feature: str, filename: str) -> None:
    spec = gherkin_blocks(COPY.read_text(encoding="utf-8"))[feature]
    on_disk = (Path(__file__).parent / filename).read_text(encoding="utf-8")
    assert on_disk == spec, f"{filename} drifted from SPEC-018 §2 ({feature})"


def test_docs_copy_of_the_spec_equals_the_shared_spec() -> None:
    if not SHARED.exists():
        pytest.skip(f"the shared spec is not checked out next to the repository ({SHARED.name})")
    assert COPY.read_bytes() == SHARED.read_bytes(), (
        "docs/spec is out of date: copy ../shared/spec/" + SPEC_NAME + " over it and re-run"
    )
