"""QUIC client tickets kept in a file (transports/quic_tls.py): written owner-only and
replaced whole, read back by a new store, each taken once — the file rewritten when taken —
and a file that cannot be read set aside with a warning."""

from __future__ import annotations

import datetime
import logging
import stat
from pathlib import Path

import pytest
from aioquic.tls import CipherSuite, SessionTicket
from l2_session.transports.quic_tls import ClientTickets


def ticket(n: int) -> SessionTicket:
    now = datetime.datetime.now(datetime.UTC)
    return SessionTicket(
        age_add=n, cipher_suite=CipherSuite.AES_128_GCM_SHA256,
        not_valid_after=now + datetime.timedelta(hours=1), not_valid_before=now,
        resumption_secret=bytes([n]) * 32, server_name="127.0.0.1", ticket=bytes([n]) * 16,
        max_early_data_size=0xFFFFFFFF, other_extensions=[(42, b"x")],
    )  # fmt: skip


def test_tickets_survive_a_new_store_and_are_taken_once(tmp_path: Path) -> None:
    path = tmp_path / "tickets.json"
    first, second = ticket(1), ticket(2)
    store = ClientTickets(4, path)
    store.remember(("127.0.0.1", 4433), first)
    store.remember(("127.0.0.1", 4434), second)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = ClientTickets(4, path)
    assert len(again) == 2
    assert again.take(("127.0.0.1", 4433)) == first  # every field back as it was
    assert ClientTickets(4, path).take(("127.0.0.1", 4433)) is None  # taken: gone from the file
    assert ClientTickets(4, path).take(("127.0.0.1", 4434)) == second


def test_the_file_keeps_at_most_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "tickets.json"
    store = ClientTickets(2, path)
    for n in range(5):
        store.remember(("127.0.0.1", 5000 + n), ticket(n))
    assert len(ClientTickets(2, path)) == 2


@pytest.mark.parametrize("content", ["not json", '[{"server": "x", "ticket": {}}]', "[1]"])
def test_a_file_that_cannot_be_read_is_set_aside(
    tmp_path: Path, content: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tickets.json"
    path.write_text(content)
    caplog.set_level(logging.WARNING)
    store = ClientTickets(4, path)
    assert len(store) == 0
    assert "not read" in caplog.text and str(path) in caplog.text
    store.remember(("127.0.0.1", 1), ticket(1))  # and the file is written afresh
    assert len(ClientTickets(4, path)) == 1
