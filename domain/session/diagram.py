"""``l2-session diagram``: the mermaid ``stateDiagram-v2`` of SPEC-018 §3.2, generated from
the transition table so the picture can never disagree with the code.

Arrows that share a source and a target are drawn once, their labels joined with " / " as
the spec does (``timeout / invalid_sig``). Self-loops are left out, as in the spec.
"""

from __future__ import annotations

from l2_session.domain.session.states import TRANSITIONS, State, state_changes


def edges() -> dict[tuple[str, str], list[str]]:
    """(source, target) -> trigger labels, in table order."""
    grouped: dict[tuple[str, str], list[str]] = {}
    for source, trigger, target in state_changes():
        grouped.setdefault((source.value, target.value), []).append(trigger.value)
    return grouped


def render_mermaid() -> str:
    lines = ["stateDiagram-v2", f"    [*] --> {State.IDLE.value}"]
    current = None
    for (source, target), labels in edges().items():
        if source != current:
            lines.append("")
            current = source
        lines.append(f"    {source} --> {target}: {' / '.join(labels)}")
    assert set(TRANSITIONS) == set(State)  # every state has a row, even without arrows
    return "\n".join(lines) + "\n"
