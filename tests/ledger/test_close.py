"""Closing a ledger while saves and reads are in flight: no crash, nothing acknowledged lost,
and a clear error for whatever comes after the close."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from l2_session.infrastructure.ledger import LedgerClosed, LedgerError
from ledger_aggregates import Conversation

CHILD = Path(__file__).with_name("close_child.py")
# Before close() waited for what was in flight, a third to two thirds of the closes crashed
# the process: ten closes missed the crash with a chance of 2% at most.
CYCLES = 10


def test_closing_while_saves_are_in_flight_never_crashes_and_loses_nothing(ledger_location):
    # In a child process: a crash must fail this test, not end the test run.
    child = subprocess.run(
        [
            sys.executable,
            str(CHILD),
            str(ledger_location),
            os.urandom(32).hex(),
            str(CYCLES),
            "0.1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    cycles = [json.loads(line) for line in child.stdout.splitlines()]
    assert child.returncode == 0, (
        f"the process ended with status {child.returncode} (negative: killed by that signal) "
        f"after {len(cycles)} of {CYCLES} closes\n{child.stderr[-2000:]}"
    )
    assert len(cycles) == CYCLES
    for report in cycles:
        assert report["acknowledged"] > 0  # the close did come while saving
        assert report["missing"] == {}, "saves that returned were lost at the close"
        assert report["verified"]
        # Each thread stopped at its first error, which named the close.
        assert len(report["errors"]) == 4 and all("closed" in e for e in report["errors"]), report


def test_a_save_after_close_raises_ledger_closed_and_writes_nothing(ledger_factory, clock):
    ledger = ledger_factory()
    conversation = Conversation(peer="did:key:peer")
    ledger.save(conversation)
    ledger.close()
    conversation.note(text="after the close")
    with pytest.raises(LedgerClosed, match="the ledger was closed") as refused:
        ledger.save(conversation)
    assert isinstance(refused.value, LedgerError)
    ledger.close()  # closing twice is harmless
    reopened = ledger_factory()
    assert reopened.repository.get(conversation.id).version == 1
