"""`l2-session diagram` prints the mermaid diagram generated from the transition table."""

from __future__ import annotations

import pytest
from l2_session.domain.session.diagram import render_mermaid
from l2_session.domain.session.states import state_changes
from l2_session.tools.cli import main


def test_cli_prints_the_generated_diagram(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diagram"]) == 0
    printed = capsys.readouterr().out
    assert printed == render_mermaid()
    assert printed.startswith("stateDiagram-v2\n    [*] --> idle\n")


def test_every_state_change_of_the_table_is_drawn_and_nothing_else() -> None:
    arrows = [line.strip() for line in render_mermaid().splitlines() if "-->" in line][1:]
    drawn = {tuple(a.split(": ")[0].split(" --> ")) for a in arrows}
    assert drawn == {(src.value, dst.value) for src, _, dst in state_changes()}
    assert all(src != dst for src, dst in drawn)  # self-loops are guarded but not drawn


def test_the_restart_and_close_arrows_are_drawn() -> None:
    # Decisions 16 and 17: a restart suspends live sessions and fails handshakes in flight;
    # a close (here, or by the peer) ends a session from anywhere.
    arrows = set(render_mermaid().splitlines())
    assert "    established --> suspended: node_restarted" in arrows
    assert "    rotating --> suspended: node_restarted" in arrows
    assert "    handshake_initiated --> failed: timeout / invalid_sig / node_restarted" in arrows
    assert "    handshake_initiated --> handshake_received: receive_handshake()" in arrows
    assert "    idle --> [*]: close()" in arrows
    assert "    established --> [*]: close() / receive_close()" in arrows
    assert "    suspended --> [*]: cleanup() / close() / receive_close()" in arrows
