"""WAL checkpoints off the commit path.

SQLite in WAL mode copies the log back into the database file when the log passes 1,000
pages (``wal_autocheckpoint``), and it does so inside whichever commit crossed the line: that
commit then writes and syncs the database file too, and takes milliseconds instead of a
fraction of one. For a session ledger that is a latency spike in whatever is waiting on that
append — a handshake answer, a resumption (docs/benchmarks.md: p99 of resumption 8-9 ms with
it, ~4 ms without).

So the ledger's connections turn the automatic checkpoint off, and one background thread,
with a connection of its own, runs ``PRAGMA wal_checkpoint(PASSIVE)`` after appends: at most
every ``min_interval_s``, never blocking a writer or a reader (PASSIVE does what it can without
waiting for locks; what it leaves, the next round takes). SQLite releases the GIL while it
works, so the copy and its sync overlap the appends. Durability does not change: a commit is
durable by the log (``synchronous``), the checkpoint only moves committed pages, and SQLite
recovers an interrupted checkpoint from the log, as it does an interrupted automatic one.
"""

from __future__ import annotations

import logging
import sqlite3
import threading

log = logging.getLogger("l2_session.ledger")

MIN_INTERVAL_S = 0.05
# The connections' own automatic checkpoint stays, as a backstop at 10x SQLite's default (about
# 40 MB of log): a log that is appended to without a pause is never wholly copied back by a
# PASSIVE checkpoint running beside the appends, so SQLite cannot start it over; the backstop
# lets a commit do that, once per this many pages, with little left for it to copy.
WAL_BACKSTOP_PAGES = 10_000


class WalCheckpointer:
    """Checkpoints ``path``'s WAL on a thread of its own, when ``notify`` says there is more."""

    def __init__(
        self,
        path: str,
        synchronous: str,
        lock_timeout: float,
        min_interval_s: float = MIN_INTERVAL_S,
    ) -> None:
        self.path, self.synchronous, self.lock_timeout = path, synchronous, lock_timeout
        self.min_interval_s = min_interval_s
        self.checkpoints = 0  # rounds run
        self.last: tuple[int, int, int] | None = None  # (busy, log frames, checkpointed frames)
        self._more = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def notify(self) -> None:
        """Appends were committed: checkpoint soon (the thread starts on the first call)."""
        if self._thread is None:
            with self._lock:
                if self._thread is None and not self._stop.is_set():
                    self._thread = threading.Thread(
                        target=self._run, name=f"wal-checkpoint {self.path}", daemon=True
                    )
                    self._thread.start()
        self._more.set()

    def _run(self) -> None:
        connection: sqlite3.Connection | None = None
        try:
            while True:
                self._more.wait()
                if self._stop.is_set():
                    return
                self._more.clear()
                try:
                    if connection is None:
                        connection = self._connect()
                    row = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error as error:  # the next round tries again, afresh
                    log.warning("WAL checkpoint of %s failed: %s", self.path, error)
                    if connection is not None:
                        connection.close()
                        connection = None
                else:
                    self.last = (int(row[0]), int(row[1]), int(row[2]))
                    self.checkpoints += 1
                if self._stop.wait(self.min_interval_s):
                    return
        finally:
            if connection is not None:
                connection.close()

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(
            self.path, timeout=self.lock_timeout, isolation_level=None, check_same_thread=False
        )
        connection.execute(f"PRAGMA synchronous={self.synchronous}")
        return connection

    def close(self) -> None:
        """Stop the thread (after the round it is in, if any) and close its connection."""
        with self._lock:
            self._stop.set()
            thread = self._thread
        self._more.set()
        if thread is not None:
            thread.join()
