"""The session channel on the wire: the manager's Data, DataAck, Heartbeat, HeartbeatAck, Close
and CloseAck frames (and the node's witnessing frames, witness_frames.py, and link checks,
link_check.py) sealed in ChaCha20-Poly1305 records once a session has keys (SPEC-018 §7.2),
each under a nonce that is never used twice with the same key.

Sans-I/O, between the manager's ``Send`` outputs and a stream transport's bytes (tcp.py).
Handshake and rotation frames stay as frames.py writes them: they carry their own signed,
versioned messages. Every frame after the handshake travels as one sealed frame::

    0x80 | conversation 16 | key id 8 | record count u8 | record ...

where each record is domain/handshake/channel.py's (``version | kind | length | counter 8 |
ciphertext || tag 16``, the header its associated data) and the plaintexts, in order, are the
inner frame as frames.py encodes it (without its length prefix), cut into pieces of at most
``MAX_PLAINTEXT - 1`` bytes, each prefixed with how many pieces follow it (u8). Counters are
consecutive within a frame and the count-down is inside the AEAD, so pieces of different
frames cannot be spliced. Heartbeats go in HEARTBEAT records, data, acks and closes in DATA
records.

Keys and nonces: the session's current key material (the ledger's) through a
``SessionChannel`` per conversation, whose send counters are reserved in the ledger before
use (domain/manager/channel.py), so no (key, nonce) pair repeats even across SIGKILL. When the
session's keys change (rotation, resumption) the channel is replaced and the old keys are
gone: a record under them is refused as ``old_key``. The key id in clear only says which keys
to try; the AEAD decides. A closed session's close frames are sealed under its last keys, with
the counters its ``Closed`` event reserved (decision 17), while the manager lets it linger.

Refusals are counted by reason in ``refused`` (``replayed``, ``forged``, ``old_key``,
``no_keys``, ``unknown_session``, ``malformed``; tcp.py adds ``unsealed`` for a channel frame
in clear) and leave every state as it was: no window moves, nothing reaches the manager. The
window moves only once every record verified *and* the records made one whole frame.
(``cannot_reserve`` counts frames this node could not seal: no counters could be reserved.)
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Callable
from typing import Any
from uuid import UUID

from l2_session.domain.handshake.errors import (
    HandshakeAuthenticationFailed,
    HandshakeError,
    ReplayedMessage,
)
from l2_session.domain.handshake.wire import HEADER, MAX_PLAINTEXT, MessageType
from l2_session.domain.manager.channel import RESERVATION_BLOCK, SessionChannel
from l2_session.domain.session.commands import CHANNEL_FRAMES, Frame, Heartbeat, HeartbeatAck
from l2_session.domain.session.errors import SessionError
from l2_session.domain.session.session import Session
from l2_session.transports.bundles import BundleRequest, BundleResponse
from l2_session.transports.frames import MAX_FRAME, FrameError, decode, encode
from l2_session.transports.link_check import LinkCheck
from l2_session.transports.witness_frames import (
    WITNESS_FRAMES,
    CheckpointOffer,
    CheckpointReply,
)

SEALED_KIND = 0x80  # plaintext frame kinds stay below it (frames.KINDS)
_HEAD = struct.Struct(">B16s8sB")
_PIECE = MAX_PLAINTEXT - 1
MAX_RECORDS = -(-MAX_FRAME // _PIECE)
KEY_ID_LEN = 8
PRUNE_FLOOR = 1024  # channels before the first prune


class SealRefused(Exception):
    """A frame not sealed or not opened; ``reason`` is the counter it is counted under."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def is_channel_frame(frame: object) -> bool:
    """Frames that travel only inside the session channel, never in clear: the manager's,
    and the node's witnessing (witness_frames.py) and link checks (link_check.py)."""
    return isinstance(frame, (*CHANNEL_FRAMES, *WITNESS_FRAMES, LinkCheck))


def _record_kind(frame: object) -> MessageType:
    heartbeat = isinstance(frame, Heartbeat | HeartbeatAck)
    return MessageType.HEARTBEAT if heartbeat else MessageType.DATA


class SealedFrames:
    """One node's end of every session channel: seals outgoing channel frames and opens
    incoming ones, with the keys of the session the frame names."""

    def __init__(
        self,
        session_for: Callable[[UUID], Session | None],
        identity_key_of: Callable[[str], bytes],
        local_did: str,
        save: Callable[[Session], object],
        *,
        block: int = RESERVATION_BLOCK,
    ) -> None:
        self._session_for = session_for
        self._identity_key_of = identity_key_of
        self._own_identity = identity_key_of(local_did)
        self._save = save
        self._block = block
        self._channels: dict[UUID, SessionChannel] = {}
        self._prune_at = PRUNE_FLOOR
        self.refused: Counter[str] = Counter()
        self.opened = 0

    # ------------------------------------------------------------------ sending
    def seal(
        self, frame: Frame | CheckpointOffer | CheckpointReply | LinkCheck, now_us: int
    ) -> bytes:
        """The sealed frame for ``frame``, length prefix included."""
        session = self._session_for(frame.conversation)
        key_id = None if session is None else session.key_id
        if session is None or key_id is None:
            raise self._refuse("no_keys", f"session for {frame.conversation} holds no keys")
        channel = self._channel(session)
        inner = encode(frame)[4:]
        pieces = [inner[at : at + _PIECE] for at in range(0, len(inner), _PIECE)]
        kind = _record_kind(frame)
        try:
            records = [
                channel.seal(bytes([len(pieces) - 1 - i]) + piece, now_us, kind)
                for i, piece in enumerate(pieces)
            ]
        except (SessionError, HandshakeError) as error:  # no counters could be reserved
            raise self._refuse("cannot_reserve", str(error)) from None
        head = _HEAD.pack(
            SEALED_KIND, frame.conversation.bytes, bytes.fromhex(key_id), len(records)
        )
        body = head + b"".join(records)
        if len(body) > MAX_FRAME:
            what = type(frame).__name__
            raise FrameError(f"sealed {what} of {len(body)} bytes exceeds {MAX_FRAME}")
        return struct.pack(">I", len(body)) + body

    # ------------------------------------------------------------------ receiving
    def open(self, peer_did: str, body: bytes) -> tuple[Any, str]:
        """The channel frame sealed in ``body`` from ``peer_did``, and the key id it was
        sealed under; ``SealRefused`` (counted) with nothing changed if it is not one."""
        conversation, key_id, records = self._parse(body)
        session = self._session_for(conversation)
        if session is None or session.peer_did != peer_did:
            raise self._refuse("unknown_session", f"no session {conversation} with {peer_did}")
        if session.key_id is None:
            raise self._refuse("no_keys", f"session {session.id} holds no keys ({session.state})")
        if session.key_id != key_id:
            raise self._refuse(
                "old_key", f"sealed under {key_id}, session {session.id} uses {session.key_id}"
            )
        channel = self._channel(session).channel
        try:
            opened = channel.verify_together(records)
        except ReplayedMessage as error:
            raise self._refuse("replayed", str(error)) from None
        except HandshakeAuthenticationFailed as error:
            raise self._refuse("forged", str(error)) from None
        except HandshakeError as error:
            raise self._refuse("malformed", str(error)) from None
        # Authentic records that are not one whole frame (a frame cut short, records of
        # several frames spliced) are refused before the window moves: the frame they came
        # from still opens.
        frame = self._reassemble(conversation, opened)
        channel.accept_together([counter for _, counter, _ in opened])
        self.opened += 1
        return frame, key_id

    def _parse(self, body: bytes) -> tuple[UUID, str, list[bytes]]:
        if len(body) < _HEAD.size:
            raise self._refuse("malformed", f"sealed frame of {len(body)} bytes is truncated")
        kind, conversation, key_id, count = _HEAD.unpack_from(body)
        if kind != SEALED_KIND or not 1 <= count <= MAX_RECORDS:
            raise self._refuse("malformed", f"kind {kind:#x} with {count} records")
        at, records = _HEAD.size, []
        for i in range(count):
            if at + HEADER.size > len(body):
                raise self._refuse("malformed", f"record {i} of {count} is truncated")
            end = at + HEADER.size + HEADER.unpack_from(body, at)[2]
            if end > len(body):
                raise self._refuse("malformed", f"record {i} of {count} is truncated")
            records.append(body[at:end])
            at = end
        if at != len(body):
            raise self._refuse("malformed", f"{len(body) - at} bytes after the last record")
        return UUID(bytes=conversation), key_id.hex(), records

    def _reassemble(self, conversation: UUID, opened: list[tuple[MessageType, int, bytes]]) -> Any:
        """The inner frame, once the pieces are checked to be one frame's, in order.
        They were authenticated already: a failure here is the sending peer's bug."""
        first = opened[0][1]
        for i, (kind, counter, payload) in enumerate(opened):
            remaining = len(opened) - 1 - i
            if counter != first + i or not payload or payload[0] != remaining:
                raise self._refuse("malformed", f"piece {i} of {len(opened)} is out of order")
            if kind != opened[0][0]:
                raise self._refuse("malformed", "pieces of one frame in different record kinds")
        try:
            wire = decode(b"".join(payload[1:] for _, _, payload in opened))
        except FrameError as error:
            raise self._refuse("malformed", str(error)) from None
        if isinstance(wire, BundleRequest | BundleResponse):  # never inside a channel
            raise self._refuse("malformed", f"a sealed {type(wire).__name__}")
        frame = wire
        if not is_channel_frame(frame) or frame.conversation != conversation:
            raise self._refuse("malformed", f"a sealed {type(frame).__name__} for {conversation}")
        if _record_kind(frame) != opened[0][0]:
            raise self._refuse("malformed", f"a {type(frame).__name__} in a {opened[0][0].name}")
        return frame

    # ------------------------------------------------------------------ keys
    def _channel(self, session: Session) -> SessionChannel:
        """The channel of the session's current keys; a new one (and the old keys dropped)
        when they changed."""
        channel = self._channels.get(session.conversation)
        if channel is not None and channel.key_id == session.key_id:
            # The same keys, but the manager may hold another object for the session (it
            # replays it from the ledger on ``restore`` or after a failed tick): reserve on
            # and save the one the manager saves, keeping the counters and the window.
            channel.session = session
        else:
            channel = SessionChannel(
                session,
                self._own_identity,
                self._identity_key_of(session.peer_did),
                self._save,
                block=self._block,
            )
            self._channels[session.conversation] = channel
            if len(self._channels) >= self._prune_at:
                self._prune()
        return channel

    def _prune(self) -> None:
        """Drop the channels of sessions that have left the manager's memory (closed) or use
        other keys since, once the table has doubled: it stays within twice the sessions in
        memory, without a scan per frame."""
        for conversation, channel in list(self._channels.items()):
            session = self._session_for(conversation)
            if session is None or session.key_id != channel.key_id:
                del self._channels[conversation]
        self._prune_at = max(PRUNE_FLOOR, 2 * len(self._channels))

    def _refuse(self, reason: str, detail: str) -> SealRefused:
        self.refused[reason] += 1
        return SealRefused(reason, detail)
