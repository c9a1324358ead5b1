"""A session's channel (domain/handshake/channel.py) whose send counters are reserved in the
ledger, so that no (key, nonce) pair is ever used twice, even across SIGKILL and restart.

Before the channel may seal under counter ``n``, a ``CountersReserved`` event saying "counters
below ``until`` (> n) may be in use under key ``key_id``" is saved — durably, on return of
``save``. A restarted process rebuilds the channel from the session replayed from the ledger and
sends from the end of the last reservation: the counters it may have used before the crash are
skipped, never repeated. Blocks trade ledger appends for skipped counters (2^60 per key).

The reservations come ahead of need (reservations.py): the first block with the keys, in the
save that records them; the next when half of the current block is used, recorded on the
session to ride with its next save. Only a channel that uses up a block before that save
saves a reservation itself, before it seals.

The keys come from the session's key material as the ledger holds it, sealed
(pqxdh.py); each end finds its direction from the two identity keys.

A closed session records nothing more, so it cannot reserve: its ``Closed`` event reserved the
counters its close frames use (``CLOSE_COUNTERS`` from where the reservations stood, decision
17), and once those are used no more close frames are sealed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from l2_session.domain.handshake.channel import Channel
from l2_session.domain.handshake.errors import HandshakeStateError
from l2_session.domain.handshake.wire import MessageType
from l2_session.domain.manager.pqxdh import session_keys_of
from l2_session.domain.manager.reservations import (
    FRESH_BLOCKS,
    RESERVATION_BLOCK,
    reservation_pending,
)
from l2_session.domain.session.errors import SessionError
from l2_session.domain.session.session import Session

__all__ = ["RESERVATION_BLOCK", "SessionChannel"]


class SessionChannel:
    def __init__(
        self,
        session: Session,
        own_identity: bytes,
        peer_identity: bytes,
        save: Callable[[Session], object],
        *,
        block: int = RESERVATION_BLOCK,
    ) -> None:
        if session.key_material is None:
            raise HandshakeStateError(f"session {session.id} holds no keys ({session.state})")
        if block < 1:
            raise ValueError(f"reservation block must be >= 1 counter, got {block}")
        self.session, self.save, self.block = session, save, block
        self.key_id = session.key_id
        keys = session_keys_of(session.key_material, own_identity, peer_identity)
        # A closed session: where its close counters start. Else after every counter reserved
        # so far — unless this process reserved the newest block with these keys, from this
        # very object, and no channel took it yet (reservations.py).
        if session.closed:
            start = until = session.close_counters_from
        else:
            start = until = session.counters_reserved()
            fresh = FRESH_BLOCKS.take(session)
            if fresh is not None:
                start, until = fresh
        self.channel = Channel(keys, next_send_counter=start, reserved_until=until)

    def seal(self, payload: bytes, now_us: int, kind: MessageType = MessageType.DATA) -> bytes:
        if self.session.key_id != self.key_id:
            raise HandshakeStateError(
                f"session {self.session.id} changed keys ({self.key_id} -> "
                f"{self.session.key_id}): open a new channel for the new keys"
            )
        channel, session = self.channel, self.session
        if channel.next_send_counter >= channel.reserved_until and session.closed:
            # Its Closed event, saved before any close frame is derived, reserved these.
            channel.reserve(session.counters_reserved())
        elif channel.next_send_counter >= channel.reserved_until:
            # The block is used up before the next one rode with a save: save it now. One
            # recorded ahead and still pending is saved as it is; otherwise reserve past what
            # the session recorded — a reservation whose save failed stays recorded in memory
            # though it is not in the ledger, and one for the same limit would not move on.
            until = session.counters_reserved()
            if until <= channel.reserved_until or not reservation_pending(session):
                until = max(channel.reserved_until, until) + self.block
                session.reserve_counters(now_us, until)
            self.save(session)  # durable first ...
            channel.reserve(until)  # ... then usable
        else:
            self._ahead(now_us)
        return channel.seal(payload, kind)

    def _ahead(self, now_us: int) -> None:
        """Take up the next block once its reservation is saved; record it, to ride with the
        session's next save, once half of the current block is used."""
        channel, session = self.channel, self.session
        recorded = session.counters_reserved()
        if recorded > channel.reserved_until:
            if not reservation_pending(session):
                channel.reserve(recorded)  # saved by now: usable
        elif channel.next_send_counter >= channel.reserved_until - self.block // 2:
            # Not in a state that reserves: the block is saved when it is needed.
            with contextlib.suppress(SessionError):
                session.reserve_counters(now_us, channel.reserved_until + self.block)

    def open(self, record: bytes) -> tuple[MessageType, bytes]:
        return self.channel.open(record)
