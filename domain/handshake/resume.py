"""Session resumption without a new KEM exchange (SPEC-018 §2.1 "Session resumption": "existing
key material is reused", "established within 100 ms").

After a full handshake each side keeps a ``ResumptionTicket``: the session id, the peer, the
resumption secret derived from the handshake's master key, a generation number, and the
responder's prekey ids. The ledger stores it sealed. To resume (after a restart, say), three
short messages prove that both sides still hold the secret and agree on fresh keys::

    RESUME          I -> R  session_id 16 | generation u32 | spk_id u32 | kem_id u32 | EK_I 32
                            | timestamp_us u64 | mac 32
    RESUME_RESPONSE R -> I  session_id 16 | EK_R 32 | mac 32
    RESUME_CONFIRM  I -> R  session_id 16 | mac 32

    th1'    = H(RESUME without mac)             mac_I1 = MAC(KDF(request, rs), th1')
    th2'    = H(th1', mac_I1, RESUME_RESPONSE header || session_id || EK_R)
    master' = KDF(resume master, rs, X25519(EK_I, EK_R), th2')
    mac_R   = MAC(KDF(resume responder confirm, master'), th2')
    th3'    = H(th2', mac_R, RESUME_CONFIRM header || session_id)
    mac_I2  = MAC(KDF(resume initiator confirm, master'), th3')

The new keys come from master' like a full handshake's (keys.session_keys), with the
same session id and generation + 1, and a new resumption secret: each ticket works once, so a
stolen old ticket is useless after the next resumption. The fresh X25519 pair gives the resumed
keys forward secrecy even if the resumption secret leaks later. Resumption is refused (use a
full handshake) when the session is unknown, the generations differ, or the responder's prekeys
changed since the ticket was made (SPEC-018 §2.1 "with unchanged prekeys").
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from l2_session.domain.handshake.errors import (
    HandshakeAuthenticationFailed,
    HandshakeError,
    HandshakeStateError,
    MalformedMessage,
    ReplayedMessage,
)
from l2_session.domain.handshake.keys import (
    CONTEXT_RESUME_AUTH,
    CONTEXT_RESUME_CONFIRM_INITIATOR,
    CONTEXT_RESUME_CONFIRM_RESPONDER,
    CONTEXT_RESUME_MASTER,
    SessionKeys,
    derive,
    dh,
    expect_id,
    mac,
    session_keys,
    transcript_hash,
    x25519_public_bytes,
)
from l2_session.domain.handshake.protocol import MAX_CLOCK_SKEW_US, ReplayCache
from l2_session.domain.handshake.wire import (
    HEADER,
    MAC_LEN,
    PROTOCOL_VERSION,
    MessageType,
    Reader,
    unframe,
)

RESUME_BODY_LEN = 16 + 4 + 4 + 4 + 32 + 8 + MAC_LEN
RESUME_RESPONSE_BODY_LEN = 16 + 32 + MAC_LEN
RESUME_CONFIRM_BODY_LEN = 16 + MAC_LEN
TICKET_VERSION = 1
TICKET_LEN = 1 + 16 + 32 + 1 + 32 + 4 + 4 + 4


class ResumeRefused(HandshakeError):
    """Resumption is not possible here; fall back to a full handshake."""

    reason = "resume_refused"


@dataclass(frozen=True)
class ResumptionTicket:
    session_id: bytes
    peer_identity: bytes
    was_initiator: bool
    resumption_secret: bytes = field(repr=False)  # never in logs or tracebacks
    generation: int
    prekey_ids: tuple[int, int]

    @classmethod
    def of(cls, keys: SessionKeys) -> ResumptionTicket:
        return cls(
            keys.session_id,
            keys.peer_identity,
            keys.is_initiator,
            keys.resumption_secret,
            keys.generation,
            keys.prekey_ids,
        )

    def encode(self) -> bytes:
        """The bytes to seal in the ledger."""
        return (
            struct.pack(">B", TICKET_VERSION)
            + self.session_id
            + self.peer_identity
            + struct.pack(">B", self.was_initiator)
            + self.resumption_secret
            + struct.pack(">III", self.generation, *self.prekey_ids)
        )

    @classmethod
    def parse(cls, data: bytes) -> ResumptionTicket:
        if len(data) != TICKET_LEN or data[0] != TICKET_VERSION:
            raise MalformedMessage(
                f"resumption ticket: expected {TICKET_LEN} bytes of version {TICKET_VERSION}, "
                f"got {len(data)} bytes" + (f" of version {data[0]}" if data else "")
            )
        r = Reader("ticket", data[1:])
        sid, peer = r.take(16, "session id"), r.take(32, "peer identity")
        role = r.u8("role")
        if role > 1:
            raise MalformedMessage(f"resumption ticket: role byte {role}")
        secret = r.take(32, "resumption secret")
        generation, spk, kem = r.u32("generation"), r.u32("spk id"), r.u32("kem id")
        return cls(sid, peer, bool(role), secret, generation, (spk, kem))


@dataclass(frozen=True)
class Resume:
    session_id: bytes
    generation: int
    prekey_ids: tuple[int, int]
    ephemeral: bytes
    timestamp_us: int
    mac: bytes

    def unauthenticated(self) -> bytes:
        return (
            HEADER.pack(PROTOCOL_VERSION, MessageType.RESUME, RESUME_BODY_LEN)
            + self.session_id
            + struct.pack(">III", self.generation, *self.prekey_ids)
            + self.ephemeral
            + struct.pack(">Q", self.timestamp_us)
        )

    def encode(self) -> bytes:
        return self.unauthenticated() + self.mac

    @classmethod
    def parse(cls, data: bytes) -> Resume:
        r = Reader("RESUME", unframe(data, MessageType.RESUME, RESUME_BODY_LEN, RESUME_BODY_LEN))
        sid, gen = r.take(16, "session id"), r.u32("generation")
        ids = (r.u32("spk id"), r.u32("kem id"))
        out = cls(
            sid, gen, ids, r.take(32, "ephemeral"), r.u64("timestamp"), r.take(MAC_LEN, "mac")
        )
        r.end()
        return out


def _response_prefix(session_id: bytes, ephemeral: bytes) -> bytes:
    return (
        HEADER.pack(PROTOCOL_VERSION, MessageType.RESUME_RESPONSE, RESUME_RESPONSE_BODY_LEN)
        + session_id
        + ephemeral
    )


def _confirm_prefix(session_id: bytes) -> bytes:
    header = HEADER.pack(PROTOCOL_VERSION, MessageType.RESUME_CONFIRM, RESUME_CONFIRM_BODY_LEN)
    return header + session_id


def _parse_pair(
    data: bytes,
    kind: MessageType,
    length: int,
    sizes: tuple[int, ...],
) -> tuple[bytes, ...]:
    r = Reader(kind.name, unframe(data, kind, length, length))
    out = tuple(r.take(n, f"field {i}") for i, n in enumerate(sizes))
    r.end()
    return out


def _check(expected: bytes, got: bytes, what: str) -> None:
    if not hmac.compare_digest(expected, got):
        raise HandshakeAuthenticationFailed(f"{what} MAC does not match")


class ResumeInitiator:
    def __init__(
        self, ticket: ResumptionTicket, request: Resume, ephemeral: X25519PrivateKey, th1: bytes
    ) -> None:
        self._ticket, self._request, self._ephemeral, self._th1 = ticket, request, ephemeral, th1
        self.done = False

    @classmethod
    def start(
        cls, ticket: ResumptionTicket, *, now_us: int, ephemeral: X25519PrivateKey | None = None
    ) -> tuple[ResumeInitiator, bytes]:
        ek = ephemeral or X25519PrivateKey.generate()
        unsigned = Resume(
            ticket.session_id,
            ticket.generation,
            ticket.prekey_ids,
            x25519_public_bytes(ek),
            now_us,
            b"",
        )
        th1 = transcript_hash(unsigned.unauthenticated())
        key = derive(CONTEXT_RESUME_AUTH, ticket.resumption_secret)
        request = replace(unsigned, mac=mac(key, th1))
        return cls(ticket, request, ek, th1), request.encode()

    def receive_response(self, data: bytes) -> tuple[bytes, SessionKeys]:
        if self.done:
            raise HandshakeStateError("this resumption already completed or failed")
        sid, ek_r, mac_r = _parse_pair(
            data, MessageType.RESUME_RESPONSE, RESUME_RESPONSE_BODY_LEN, (16, 32, MAC_LEN)
        )
        expect_id("RESUME_RESPONSE", sid, self._ticket.session_id)
        self.done = True
        t = self._ticket
        th2 = transcript_hash(self._th1, self._request.mac, _response_prefix(sid, ek_r))
        master = derive(
            CONTEXT_RESUME_MASTER, t.resumption_secret, dh(self._ephemeral, ek_r, "resume DH"), th2
        )
        _check(mac(derive(CONTEXT_RESUME_CONFIRM_RESPONDER, master), th2), mac_r, "RESUME_RESPONSE")
        th3 = transcript_hash(th2, mac_r, _confirm_prefix(sid))
        confirm = _confirm_prefix(sid) + mac(derive(CONTEXT_RESUME_CONFIRM_INITIATOR, master), th3)
        keys = session_keys(
            master,
            th3,
            t.peer_identity,
            True,
            t.prekey_ids,
            session_id=sid,
            generation=t.generation + 1,
        )
        return confirm, keys


class PendingResume:
    def __init__(self, ticket: ResumptionTicket, master: bytes, th2: bytes, mac_r: bytes) -> None:
        self.ticket, self._master, self._th2, self._mac_r = ticket, master, th2, mac_r
        self.done = False

    def receive_confirm(self, data: bytes) -> SessionKeys:
        if self.done:
            raise HandshakeStateError("this resumption already completed or failed")
        sid, got = _parse_pair(
            data, MessageType.RESUME_CONFIRM, RESUME_CONFIRM_BODY_LEN, (16, MAC_LEN)
        )
        expect_id("RESUME_CONFIRM", sid, self.ticket.session_id)
        self.done = True
        th3 = transcript_hash(self._th2, self._mac_r, _confirm_prefix(sid))
        _check(
            mac(derive(CONTEXT_RESUME_CONFIRM_INITIATOR, self._master), th3), got, "RESUME_CONFIRM"
        )
        t = self.ticket
        return session_keys(
            self._master,
            th3,
            t.peer_identity,
            False,
            t.prekey_ids,
            session_id=sid,
            generation=t.generation + 1,
        )


class ResumeResponder:
    """Answers RESUME for the sessions whose tickets ``lookup`` finds, while this node's
    prekeys are still ``current_prekey_ids``."""

    def __init__(
        self,
        lookup: Callable[[bytes], ResumptionTicket | None],
        current_prekey_ids: tuple[int, int],
        *,
        max_skew_us: int = MAX_CLOCK_SKEW_US,
        replay_cache: ReplayCache | None = None,
    ) -> None:
        self.lookup, self.current_prekey_ids = lookup, current_prekey_ids
        self.max_skew_us = max_skew_us
        self.replay_cache = replay_cache or ReplayCache()

    def receive_resume(
        self, data: bytes, *, now_us: int, ephemeral: X25519PrivateKey | None = None
    ) -> tuple[bytes, PendingResume]:
        request = Resume.parse(data)
        sid = request.session_id
        ticket = self.lookup(sid)
        if ticket is None:
            raise ResumeRefused(f"no resumable session {sid.hex()}: do a full handshake")
        if request.generation != ticket.generation:
            raise ResumeRefused(
                f"session {sid.hex()}: peer resumes generation {request.generation}, this node "
                f"holds {ticket.generation}; do a full handshake"
            )
        if not request.prekey_ids == ticket.prekey_ids == self.current_prekey_ids:
            raise ResumeRefused(
                f"session {sid.hex()}: prekeys changed ({ticket.prekey_ids} -> "
                f"{self.current_prekey_ids}); do a full handshake"
            )
        if abs(now_us - request.timestamp_us) > self.max_skew_us:
            raise ReplayedMessage(f"RESUME timestamp {request.timestamp_us} outside the window")
        self.replay_cache.check(request.ephemeral, now_us)
        th1 = transcript_hash(request.unauthenticated())
        _check(
            mac(derive(CONTEXT_RESUME_AUTH, ticket.resumption_secret), th1), request.mac, "RESUME"
        )
        self.replay_cache.remember(request.ephemeral, request.timestamp_us + self.max_skew_us)
        ek_r = ephemeral or X25519PrivateKey.generate()
        prefix = _response_prefix(sid, x25519_public_bytes(ek_r))
        th2 = transcript_hash(th1, request.mac, prefix)
        master = derive(
            CONTEXT_RESUME_MASTER,
            ticket.resumption_secret,
            dh(ek_r, request.ephemeral, "resume DH"),
            th2,
        )
        mac_r = mac(derive(CONTEXT_RESUME_CONFIRM_RESPONDER, master), th2)
        return prefix + mac_r, PendingResume(ticket, master, th2, mac_r)
