"""A session's channel (domain/handshake/channel.py) whose send counters are reserved in the
ledger, so that no (key, nonce) pair is ever used twice, even across SIGKILL and restart.

Before the channel may seal under counter ``n``, a ``CountersReserved`` event saying "counters
below ``until`` (> n) may be in use under key ``key_id``" is saved — durably, on return of
``save``. A restarted process rebuilds the channel from the session replayed from the ledger and
sends from the end of the last reservation: the counters it may have used before the crash are
skipped, never repeated. Blocks trade ledger appends for skipped counters (2^60 per key).

The keys come from the session's key material as the ledger holds it, sealed
(pqxdh.py); each end finds its direction from the two identity keys.

A closed session records nothing more, so it cannot reserve: its ``Closed`` event reserved the
counters its close frames use (``CLOSE_COUNTERS`` from where the reservations stood, decision
17), and once those are used no more close frames are sealed.
"""

from __future__ import annotations

from collections.abc import Callable

from l2_session.domain.handshake.channel import Channel
from l2_session.domain.handshake.errors import HandshakeStateError
from l2_session.domain.handshake.wire import MessageType
from l2_session.domain.manager.pqxdh import session_keys_of
from l2_session.domain.session.session import Session

RESERVATION_BLOCK = 1024  # counters per ledger append


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
        # 0 for keys that never sent; for a closed session, where its close counters start.
        start = session.close_counters_from if session.closed else session.counters_reserved()
        self.channel = Channel(keys, next_send_counter=start, reserved_until=start)

    def seal(self, payload: bytes, now_us: int, kind: MessageType = MessageType.DATA) -> bytes:
        if self.session.key_id != self.key_id:
            raise HandshakeStateError(
                f"session {self.session.id} changed keys ({self.key_id} -> "
                f"{self.session.key_id}): open a new channel for the new keys"
            )
        if self.channel.next_send_counter >= self.channel.reserved_until and self.session.closed:
            # Its Closed event, saved before any close frame is derived, reserved these.
            self.channel.reserve(self.session.counters_reserved())
        elif self.channel.next_send_counter >= self.channel.reserved_until:
            # Past what the session already recorded too: a reservation whose save failed
            # stays recorded in memory (and is saved with the session's next save), and a
            # second one for the same limit would not move forward.
            until = max(self.channel.reserved_until, self.session.counters_reserved()) + self.block
            self.session.reserve_counters(now_us, until)
            self.save(self.session)  # durable first ...
            self.channel.reserve(until)  # ... then usable
        return self.channel.seal(payload, kind)

    def open(self, record: bytes) -> tuple[MessageType, bytes]:
        return self.channel.open(record)
