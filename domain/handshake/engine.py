"""One object that a session manager drives with bytes and time, for every handshake of a node.

It dispatches each incoming frame by type to the right handshake in progress, runs the
admission gate before any public-key work, enforces the handshake timeout, and reports what
happened as an ``Outcome`` in SPEC-018's words: what to send back, a session ``established``,
or ``failed`` with reason ``authentication_failed`` or ``timeout`` (§2.1). Malformed, replayed,
refused or stray input is ``dropped`` with the reason and changes nothing. It is sans-I/O: the
caller moves the bytes and supplies ``now_us``.

Handshakes in progress are bounded (``max_pending``); beyond it the oldest is forgotten, as a
SYN cache does, so a flood cannot grow memory (admission keeps it from getting that far).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from l2_session.domain.handshake.admission import HandshakeAdmission, claimed_identity
from l2_session.domain.handshake.bundle import PrekeyBundle
from l2_session.domain.handshake.errors import (
    HandshakeAuthenticationFailed,
    HandshakeError,
    MalformedMessage,
)
from l2_session.domain.handshake.kem import DEFAULT_BACKEND, KemBackend
from l2_session.domain.handshake.keys import SessionKeys, ed25519_private_to_x25519
from l2_session.domain.handshake.protocol import InitiatorHandshake, PendingResponse, Responder
from l2_session.domain.handshake.resume import (
    PendingResume,
    ResumeInitiator,
    ResumeResponder,
    ResumptionTicket,
)
from l2_session.domain.handshake.wire import HANDSHAKE_ID_LEN, MessageType, peek_type
from l2_session.domain.session.errors import FailureReason

HANDSHAKE_TIMEOUT_US = 5_000_000  # SPEC-018 §2.1 "no response within 5 seconds"
MAX_PENDING = 10_000


@dataclass(frozen=True)
class Outcome:
    """What one input (or one expiry) did. At most one of established/failed/dropped is set."""

    send: bytes | None = None
    established: SessionKeys | None = None
    failed: str | None = None  # a FailureReason value
    dropped: str | None = None  # why the input was ignored; no state changed
    peer_identity: bytes | None = None
    handshake_id: bytes | None = None
    quarantined: bool = False  # the (identity, source) pair was quarantined for 60 s
    # A one-time prekey was spent: persist ``responder.secrets`` (KeyStore.set_prekeys) before
    # sending, or a restart would bring the spent prekey back.
    prekeys_changed: bool = False


@dataclass
class _Pending:
    handshake: Any  # InitiatorHandshake | PendingResponse | ResumeInitiator | PendingResume
    started_us: int
    peer: bytes | None
    source: str


class HandshakeEngine:
    def __init__(
        self,
        identity: Ed25519PrivateKey,
        *,
        responder: Responder | None = None,
        resume_responder: ResumeResponder | None = None,
        admission: HandshakeAdmission | None = None,
        kem: KemBackend = DEFAULT_BACKEND,
        timeout_us: int = HANDSHAKE_TIMEOUT_US,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.identity, self.responder, self.resume_responder = identity, responder, resume_responder
        self._identity_dh = ed25519_private_to_x25519(identity)
        self.admission = admission or HandshakeAdmission()
        self.kem, self.timeout_us, self.max_pending = kem, timeout_us, max_pending
        self._pending: OrderedDict[tuple[MessageType, bytes], _Pending] = OrderedDict()

    def pending(self) -> int:
        return len(self._pending)

    def _add(self, awaits: MessageType, key: bytes, entry: _Pending) -> None:
        self._pending[(awaits, key)] = entry
        while len(self._pending) > self.max_pending:
            self._pending.popitem(last=False)

    # --- starting ------------------------------------------------------------------------------

    def initiate(
        self, bundle: PrekeyBundle, *, now_us: int, expected_responder: bytes, source: str = ""
    ) -> tuple[bytes, bytes]:
        """(handshake id, INIT to send). ``expected_responder``: the key the peer's DID names."""
        hs, init = InitiatorHandshake.start(
            self.identity,
            bundle,
            now_us=now_us,
            expected_responder=expected_responder,
            kem=self.kem,
            identity_dh=self._identity_dh,
        )
        self._add(
            MessageType.RESPONSE, hs.handshake_id, _Pending(hs, now_us, expected_responder, source)
        )
        return hs.handshake_id, init

    def resume(self, ticket: ResumptionTicket, *, now_us: int, source: str = "") -> bytes:
        """RESUME to send; on no answer within the timeout, fall back to ``initiate``."""
        start, request = ResumeInitiator.start(ticket, now_us=now_us)
        self._add(
            MessageType.RESUME_RESPONSE,
            ticket.session_id,
            _Pending(start, now_us, ticket.peer_identity, source),
        )
        return request

    # --- receiving -----------------------------------------------------------------------------

    def receive(
        self, data: bytes, *, source: str, now_us: int, expected_initiator: bytes | None = None
    ) -> Outcome:
        """``expected_initiator``: for an INIT, the identity key its sender claimed elsewhere
        (the DID its connection named); an INIT signed by another is dropped for nothing."""
        try:
            kind = peek_type(data)
        except MalformedMessage as error:
            return Outcome(dropped=str(error))
        if kind == MessageType.INIT:
            return self._on_init(data, source, now_us, expected_initiator)
        if kind == MessageType.RESUME:
            return self._on_resume(data, source, now_us)
        if kind in (
            MessageType.RESPONSE,
            MessageType.CONFIRM,
            MessageType.RESUME_RESPONSE,
            MessageType.RESUME_CONFIRM,
        ):
            return self._on_reply(kind, data, source, now_us)
        return Outcome(dropped=f"{kind.name} is not a handshake message")

    def _on_init(self, data: bytes, source: str, now_us: int, expected: bytes | None) -> Outcome:
        if self.responder is None:
            return Outcome(dropped="this node does not accept handshakes (no prekeys)")
        claimed = claimed_identity(data)
        if expected is not None and claimed is not None and claimed != expected:
            # The cheapest check of all, before the gate, the signature, any DH or the KEM.
            return Outcome(
                dropped=f"INIT claims identity {claimed.hex()}, its sender {expected.hex()}"
            )
        try:
            init = self.admission.admit_init(data, source, now_us)
        except HandshakeError as error:
            return Outcome(dropped=str(error))
        before = self.responder.secrets
        try:
            response, pending = self.responder.receive_init(data, now_us=now_us)
        except HandshakeAuthenticationFailed as error:
            self.admission.quarantine(init.initiator_identity, source, now_us)
            return Outcome(
                dropped=str(error),
                peer_identity=init.initiator_identity,
                quarantined=True,
                prekeys_changed=self.responder.secrets is not before,
            )
        except HandshakeError as error:
            return Outcome(dropped=str(error), prekeys_changed=self.responder.secrets is not before)
        self._add(
            MessageType.CONFIRM,
            pending.handshake_id,
            _Pending(pending, now_us, init.initiator_identity, source),
        )
        return Outcome(
            send=response,
            handshake_id=pending.handshake_id,
            peer_identity=init.initiator_identity,
            prekeys_changed=self.responder.secrets is not before,
        )

    def _on_resume(self, data: bytes, source: str, now_us: int) -> Outcome:
        if self.resume_responder is None:
            return Outcome(dropped="this node does not resume sessions")
        try:
            response, pending = self.resume_responder.receive_resume(data, now_us=now_us)
        except HandshakeError as error:
            return Outcome(dropped=str(error))
        self._add(
            MessageType.RESUME_CONFIRM,
            pending.ticket.session_id,
            _Pending(pending, now_us, pending.ticket.peer_identity, source),
        )
        return Outcome(send=response, peer_identity=pending.ticket.peer_identity)

    def _on_reply(self, kind: MessageType, data: bytes, source: str, now_us: int) -> Outcome:
        key = bytes(data[4 : 4 + HANDSHAKE_ID_LEN])  # handshake id or session id: first field
        entry = self._pending.get((kind, key))
        if entry is None:
            return Outcome(dropped=f"{kind.name} for no handshake in progress ({key.hex()})")
        if entry.source and source != entry.source:
            # Anyone who saw the INIT knows the handshake id; a reply from elsewhere must not be
            # able to abort the handshake or get the real peer quarantined.
            return Outcome(dropped=f"{kind.name} from {source}, expected from {entry.source}")
        hs = entry.handshake
        try:
            if isinstance(hs, InitiatorHandshake | ResumeInitiator):
                reply, keys = hs.receive_response(data)
            else:
                assert isinstance(hs, PendingResponse | PendingResume)
                reply, keys = None, hs.receive_confirm(data)
        except MalformedMessage as error:
            return Outcome(dropped=str(error))  # not for us after all; keep waiting
        except HandshakeError:
            # SPEC-018 §2.1: authentication failed -> the peer is quarantined for 60 s (here,
            # its INITs from that address; the session manager also holds off its retries).
            del self._pending[(kind, key)]
            if entry.peer is not None:
                self.admission.quarantine(entry.peer, entry.source, now_us)
            return Outcome(
                failed=FailureReason.AUTHENTICATION_FAILED.value,
                peer_identity=entry.peer,
                handshake_id=key,
                quarantined=entry.peer is not None,
            )
        del self._pending[(kind, key)]
        if not isinstance(hs, InitiatorHandshake | ResumeInitiator) and entry.peer:
            self.admission.authenticated(entry.peer, entry.source)
        return Outcome(
            send=reply, established=keys, peer_identity=keys.peer_identity, handshake_id=key
        )

    # --- time ----------------------------------------------------------------------------------

    def expire(self, now_us: int) -> list[Outcome]:
        """Handshakes that got no answer within the timeout: ``failed`` with ``timeout``."""
        out = []
        # Entries are kept in start order, so the scan stops at the first one still in time.
        while self._pending:
            (kind, key), entry = next(iter(self._pending.items()))
            if now_us - entry.started_us < self.timeout_us:
                break
            del self._pending[(kind, key)]
            out.append(
                Outcome(
                    failed=FailureReason.TIMEOUT.value, peer_identity=entry.peer, handshake_id=key
                )
            )
        return out
