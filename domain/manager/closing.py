"""Closing a session (decision 17 in docs/spec-decisions.md), and the linger after it.

``close`` records ``Closed`` (reason ``closed``, with the messages left unacknowledged) and the
session is FINAL; a ``Close`` goes to the peer, which records ``Closed`` (reason ``closed by
peer``) and answers ``CloseAck``. Both frames travel sealed under the session keys on a real
transport, so nobody else can end a session.

Frames get lost, so a closed session that has keys *lingers* in memory (like TCP's FIN_WAIT
and TIME_WAIT) for ``timers.close_linger`` (32 s by default): the closer resends its ``Close``
(2 s, then 4, 8, 16 s later) until a ``CloseAck`` or a ``Close`` from the peer comes; any
other frame for the conversation — a heartbeat, data, a retry (a handshake frame, which anyone
can send, once per 2 s) — is answered with the ``Close``, and a ``Close`` with a ``CloseAck``,
at either end. When the linger ends (or the
closer's close is acknowledged) the session leaves memory, its keys with it. The linger is
memory only: a node that restarts meanwhile has the session closed and answers nothing more
for it; the peer, if it never heard, finds out through its heartbeats (decision 1) and its
lease (decision 8).

Mixed into ``SessionManager``, which provides the lookups and bookkeeping declared below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from uuid import UUID

from l2_session.domain.manager.deadlines import DeadlineHeap
from l2_session.domain.manager.outbound import send
from l2_session.domain.session import timers
from l2_session.domain.session.commands import CHANNEL_FRAMES, Close, CloseAck, Frame, Output
from l2_session.domain.session.errors import CloseReason, SessionClosed, StaleFrame
from l2_session.domain.session.session import Session
from l2_session.domain.session.states import Trigger

if TYPE_CHECKING:
    from collections.abc import Callable


@dataclass
class _Linger:
    """A closed session kept in memory for its close exchange."""

    session: Session
    until_us: int
    resend_at_us: int | None  # None: not resending (acknowledged, or not the closer)
    resends: int = 0
    answered_at_us: int | None = None  # the last close sent for a frame anyone could send

    def wake_at(self) -> int:
        return self.until_us if self.resend_at_us is None else min(self.resend_at_us, self.until_us)


class Closing:
    # Provided by SessionManager (manager.py).
    _sessions: dict[UUID, Session]
    _lingering: dict[UUID, _Linger]  # conversation -> its closed session's linger
    _linger_deadlines: DeadlineHeap  # keyed by conversation

    def session(self, session_id: UUID) -> Session:
        raise NotImplementedError

    def _recover_once(self, now_us: int) -> None:
        raise NotImplementedError

    def _commit(self, s: Session, *others: Any, arm: bool = True) -> list[Output]:
        raise NotImplementedError

    def _in_one_save(self, commands: Callable[[], list[list[Any]]]) -> list[list[Output]]:
        raise NotImplementedError

    def _drop(self, sid: UUID) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ API
    def close(self, session_id: UUID, now_us: int) -> list[Output]:
        """End the session, from any state (decision 17): recorded in the ledger, the peer told
        under the session keys if it has any. ``SessionClosed`` if it is closed already."""
        self._recover_once(now_us)
        s = self.session(session_id)
        s.close(now_us)
        return self._commit(s)

    def close_all(self, now_us: int) -> list[Output]:
        """``close`` every session this manager holds that is not closed, in one ``save``."""
        self._recover_once(now_us)
        live = [s for s in self._sessions.values() if not s.closed]

        def each() -> list[list[Any]]:
            planned = []
            for s in live:
                s.close(now_us)
                planned.append(self._commit(s))
            return planned

        return [o for group in self._in_one_save(each) for o in group]

    def awaiting_close_acks(self) -> int:
        """Closes sent by this node that no ``CloseAck`` (or ``Close``) has answered yet and
        whose linger has not ended."""
        return sum(1 for linger in self._lingering.values() if linger.resend_at_us is not None)

    # ------------------------------------------------------------------ frames
    def _on_close_frame(self, s: Session, frame: Close | CloseAck, now_us: int) -> list[Output]:
        """A close frame for a session that is not lingering."""
        if isinstance(frame, CloseAck):
            raise StaleFrame(f"a close acknowledgement for session {s.id}, which is not closing")
        s.receive_close(now_us)
        return self._commit(s)  # the CloseAck comes from the Closed event (outbound.py)

    def _on_lingering(self, linger: _Linger, frame: Frame, now_us: int) -> list[Output]:
        """A frame for a closed session that lingers: it is about the close."""
        s = linger.session
        closer = s.close_reason == CloseReason.CLOSED
        if isinstance(frame, Close):
            linger.resend_at_us = None  # the peer's side is closed: ours needs no more resends
            return [send(s, CloseAck(s.conversation))]
        if isinstance(frame, CloseAck):
            if closer:
                self._end_linger(s.conversation)
            return []
        if not closer:
            raise SessionClosed(Trigger.RECEIVE_MESSAGE)
        # The peer missed our close: a heartbeat, data, a handshake or resumption retry. A
        # channel frame came sealed by the peer; a handshake frame anyone can send, so those
        # get a close (and spend its reserved counters) at most once per resend interval.
        if not isinstance(frame, CHANNEL_FRAMES):
            quiet = timers.close_resend_after(s.config, 0)
            if linger.answered_at_us is not None and now_us < linger.answered_at_us + quiet:
                raise SessionClosed(Trigger.RECEIVE_HANDSHAKE)
            linger.answered_at_us = now_us
        return [send(s, Close(s.conversation))]

    # ------------------------------------------------------------------ linger
    def _linger(self, s: Session) -> bool:
        """After the save that closed ``s``: keep it for its close exchange, if it has one
        (it was closed by ``close`` or the peer's close, under keys). False: it may go."""
        if s.close_reason is None or s.key_material is None:
            return False
        closed_at = s.at_us
        resend_at = None
        if s.close_reason == CloseReason.CLOSED:
            resend_at = closed_at + timers.close_resend_after(s.config, 0)
        linger = _Linger(s, closed_at + timers.close_linger(s.config), resend_at)
        self._lingering[s.conversation] = linger
        self._linger_deadlines.arm(s.conversation, linger.wake_at())
        return True

    def _lingering_for(self, conversation: UUID, peer_did: str) -> _Linger | None:
        linger = self._lingering.get(conversation)
        return linger if linger is not None and linger.session.peer_did == peer_did else None

    def _tick_closing(self, now_us: int) -> list[Output]:
        """Resend unanswered closes that are due; let lingers that ended go."""
        out: list[Output] = []
        for conversation in self._linger_deadlines.pop_due(now_us):
            linger = self._lingering.get(conversation)
            if linger is None:
                continue
            if now_us >= linger.until_us:
                self._end_linger(conversation)
                continue
            if linger.resend_at_us is not None and now_us >= linger.resend_at_us:
                s = linger.session
                out.append(send(s, Close(conversation)))
                linger.resends += 1
                linger.resend_at_us = now_us + timers.close_resend_after(s.config, linger.resends)
            self._linger_deadlines.arm(conversation, linger.wake_at())
        return out

    def _end_linger(self, conversation: UUID) -> None:
        linger = self._lingering.pop(conversation)
        self._linger_deadlines.arm(conversation, None)
        self._drop(linger.session.id)
