"""The transition table against SPEC-018 §3.1 and the §3.2 mermaid diagram, parsed from the
spec text. Every spec arrow is in the table and every table arrow is in the spec, unless it
is a deviation listed in docs/spec-decisions.md; and every decision names a test that exists.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from l2_session.domain.session.diagram import edges
from l2_session.domain.session.states import FINAL, TRANSITIONS, State, state_changes

ROOT = Path(__file__).resolve().parents[2]
SPEC = (ROOT / "docs" / "spec" / "SPEC-018-l2-session-manager.md").read_text(encoding="utf-8")
DECISIONS = (ROOT / "docs" / "spec-decisions.md").read_text(encoding="utf-8")

Arrow = tuple[str, str, str]  # (from, to, label)


def spec_arrows() -> set[Arrow]:
    (diagram,) = re.findall(r"```mermaid\n(.*?)```", SPEC, re.S)
    assert diagram.lstrip().startswith("stateDiagram-v2")
    arrows: set[Arrow] = set()
    for line in diagram.splitlines():
        m = re.fullmatch(r"\s*(\S+) --> (\S+?)(?:: (.+?))?\s*", line)
        if m and m.group(1) != "[*]":  # the initial arrow is not a transition
            for label in (m.group(3) or "").split(" / "):
                arrows.add((m.group(1), m.group(2), label.strip()))
    return arrows


def table_arrows() -> set[Arrow]:
    return {(src.value, dst.value, trigger.value) for src, trigger, dst in state_changes()}


def deviations() -> set[tuple[str, str, str, str]]:
    section = DECISIONS.split("## Deviations from the §3.2 diagram", 1)[1]
    rows = set()
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0] not in ("from", "---"):
            rows.add((cells[0], cells[1], cells[2], cells[3]))
    assert rows, "no deviation rows found in docs/spec-decisions.md"
    return rows


def test_every_spec_arrow_is_in_the_table_or_a_listed_replacement() -> None:
    replaced = {(f, t, spec) for f, t, spec, _ in deviations() if spec != "—"}
    missing = spec_arrows() - table_arrows() - replaced
    assert not missing, f"spec arrows the table lacks, not listed as deviations: {missing}"


def test_every_table_arrow_is_in_the_spec_or_a_listed_deviation() -> None:
    listed = {(f, t, table) for f, t, _, table in deviations()}
    extra = table_arrows() - spec_arrows() - listed
    assert not extra, f"table arrows not in SPEC-018 §3.2 nor in spec-decisions.md: {extra}"


def test_every_listed_deviation_is_real() -> None:
    for f, t, spec, table in deviations():
        assert (f, t, table) in table_arrows(), f"deviation row not in the table: {f}->{t} {table}"
        assert (f, t, table) not in spec_arrows(), f"not a deviation, the spec has it: {table}"
        if spec != "—":
            assert (f, t, spec) in spec_arrows(), f"spec label {spec!r} not in the spec diagram"


def test_section_3_1_valid_transitions_match_the_table() -> None:
    rows = re.findall(r"^\| `(\w+)` \| [^|]+ \| ([^|]+) \|$", SPEC, re.M)
    assert {name for name, _ in rows} == {s.value for s in State}
    for name, valid in rows:
        # Cells read like "`[cleanup]`, `handshake_initiated` (retry)".
        spec_targets = {re.sub(r"\(.*\)", "", t).strip(" `") for t in valid.split(",")}
        spec_targets = {FINAL.value if t == "[cleanup]" else t for t in spec_targets}
        table_targets = {dst.value for dst in TRANSITIONS[State(name)].values()} - {name}
        listed = {t for f, t, _, _ in deviations() if f == name}
        assert spec_targets <= table_targets, name
        assert table_targets - spec_targets <= listed, f"{name}: unlisted targets"


def test_generated_diagram_groups_labels_like_the_spec() -> None:
    labels = ["timeout", "invalid_sig", "node_restarted"]
    assert edges()[("handshake_initiated", "failed")] == labels


NUMBERED = re.findall(r"^## (\d+)\. ", DECISIONS, flags=re.M)


def test_decisions_are_numbered_1_to_n_and_cover_the_issue() -> None:
    # In order and each once. A number may be missing: decisions are cited by number in code
    # and tests, so they are never renumbered.
    numbers = [int(n) for n in NUMBERED]
    assert numbers[0] == 1 and numbers == sorted(set(numbers))
    assert len(NUMBERED) >= 8  # the eight points where the spec's prose and diagram disagree


@pytest.mark.parametrize("number", [int(n) for n in NUMBERED])
def test_each_decision_is_pinned_by_a_test_that_exists(number: int) -> None:
    [body] = [b for b in re.split(r"^## ", DECISIONS, flags=re.M) if b.startswith(f"{number}. ")]
    pinned = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", body.split("**Pinned by:**", 1)[1])
    assert pinned, f"decision {number} names no test"
    for path, name in pinned:
        source = (ROOT / path).read_text(encoding="utf-8")
        assert re.search(rf"^def {name}\(", source, re.M), f"{path}::{name} does not exist"
