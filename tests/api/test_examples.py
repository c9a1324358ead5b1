"""examples/ run as their docstrings say: separate processes, real sockets, real keys; what
they print is checked against the ledgers they leave."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from queue import Empty, Queue

from l2_session.projections.history import LedgerHistory

from l2_session import SessionLedger, verify

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
WAIT = 30  # a bound for a line that should come at once; never a measurement


class Process:
    """An example in its own process, its stdout read line by line."""

    def __init__(self, cwd: Path, *args: str) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, *args], cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        self.lines: Queue[str] = Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.put(line.rstrip("\n"))

    def expect(self, pattern: str) -> re.Match[str]:
        """The next line that matches ``pattern`` (the lines before it are kept in ``seen``)."""
        while True:
            try:
                line = self.lines.get(timeout=WAIT)
            except Empty:
                raise AssertionError(
                    f"no line matching {pattern!r}; saw {self.seen}; stderr: {self.stderr()}"
                ) from None
            self.seen.append(line)
            found = re.search(pattern, line)
            if found:
                return found

    def type(self, line: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(line + "\n")
        self.popen.stdin.flush()

    def stderr(self) -> str:
        if self.popen.poll() is None:
            return "(running)"
        assert self.popen.stderr is not None
        return self.popen.stderr.read()

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
            try:
                self.popen.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def sessions_in(path: Path) -> dict[str, dict]:
    ledger = SessionLedger(path, create=False)
    try:
        assert verify(ledger).ok
        return {
            s["id"]: s
            for s in (r.summary() for r in LedgerHistory(ledger).states_at())
            if s["kind"] == "session"
        }
    finally:
        ledger.close()


def test_chat_between_two_terminals(tmp_path):
    bob = Process(tmp_path, str(EXAMPLES / "chat.py"), "--name", "bob", "--listen", "127.0.0.1:0")
    alice = None
    try:
        target = bob.expect(r"connect with --connect (\S+)").group(1)
        alice = Process(tmp_path, str(EXAMPLES / "chat.py"), "--name", "alice", "--connect", target)
        sid = alice.expect(r"\* session (\S+) with (\S+) over quic").group(1)
        bob.expect(r"\* session \S+ with did:key:\S+ over quic")
        alice.type("hello, bob")
        assert bob.expect(r"> (.*)$").group(1) == "hello, bob"
        bob.type("hello, alice")
        assert alice.expect(r"> (.*)$").group(1) == "hello, alice"
        alice.popen.stdin.close()  # Ctrl-D: alice closes the session, bob is told
        alice.expect(r"\* the session is closed")
        bob.expect(r"\* the session is closed")
        assert alice.popen.wait(WAIT) == 0 and bob.popen.wait(WAIT) == 0
    finally:
        for side in (alice, bob):
            if side is not None:
                side.stop()
    (alice_session,) = sessions_in(tmp_path / "alice.sqlite3").values()
    (bob_session,) = sessions_in(tmp_path / "bob.sqlite3").values()
    assert alice_session["id"] == sid
    assert (alice_session["state"], alice_session["close_reason"]) == ("closed", "closed")
    assert (bob_session["state"], bob_session["close_reason"]) == ("closed", "closed by peer")
    assert alice_session["queue"]["next_seq"] == 2 and bob_session["queue"]["next_seq"] == 2


def test_a_session_resumed_after_its_process_restarts_and_after_a_kill(tmp_path):
    script = str(EXAMPLES / "resume.py")
    server = Process(tmp_path, script, "serve", "--name", "bob", "--listen", "127.0.0.1:0")
    try:
        to = server.expect(r"serving: --to (\S+)").group(1)

        def send(text: str) -> list[str]:
            run = subprocess.run(
                [sys.executable, script, "send", "--name", "alice", "--to", to, text],
                cwd=tmp_path, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert run.returncode == 0, run.stderr
            return run.stdout.splitlines()

        first = send("one")
        sid = re.fullmatch(r"established session (\S+)", first[0]).group(1)
        assert first[1] == "echo #1: one"
        assert send("two") == [f"resumed session {sid}", "echo #2: two"]
        # A process killed (SIGKILL) after its message was saved: the next run resumes,
        # and the peer has the message once.
        killed = Process(tmp_path, script, "send", "--name", "alice", "--to", to, "three")
        killed.expect(r"resumed session")
        killed.popen.kill()
        killed.popen.wait()
        after = send("four")
        assert after[0] == f"resumed session {sid}"
        server.expect(r"session .* from")  # bob accepted one session, once
        assert not [line for line in server.seen if "from" in line][1:]
    finally:
        server.stop()
    alice = sessions_in(tmp_path / "alice.sqlite3")
    assert list(alice) == [sid]  # one session across four processes
    sent = alice[sid]["queue"]["next_seq"] - 1
    assert sent in (3, 4)  # "three" was saved unless the kill came first
    # The first echo the last run read: of "three" if it was saved (sent again on resuming).
    assert after[1] == ("echo #3: three" if sent == 4 else "echo #3: four")
    bob = sessions_in(tmp_path / "bob.sqlite3")
    (bob_session,) = bob.values()
    assert bob_session["queue"]["next_expected_seq"] - 1 <= sent
