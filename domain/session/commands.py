"""What the outside world hands the session core, and what the core hands back.

Transports turn bytes into these frames; timers turn deadlines into session commands
(``timers.Timer``). The manager turns both into ``Session`` commands and answers with
``Send`` and ``Deliver`` outputs. Nothing here performs I/O (sans-I/O, see aioquic / h11).

Frames name the conversation by the initiator's session id; each end keeps its own
``Session`` aggregate for it.

Handshake frames carry the key exchange's messages (``domain/manager/keyexchange.py``) as bytes.
The ``authentic`` flag stands for the outcome of the signature check done by the handshake
layer (PQxdh, docs/handshake.md); a frame whose signature failed arrives with it False.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID


@dataclass(frozen=True, slots=True)
class HandshakeRequest:
    conversation: UUID
    key_share: bytes
    resuming: bool = False
    authentic: bool = True


@dataclass(frozen=True, slots=True)
class HandshakeResponse:
    conversation: UUID
    key_share: bytes
    prekeys: str = ""
    authentic: bool = True


@dataclass(frozen=True, slots=True)
class HandshakeAck:
    """Key confirmation from the initiator (decision 6); empty for a resumption."""

    conversation: UUID
    confirmation: bytes = b""
    authentic: bool = True


@dataclass(frozen=True, slots=True)
class Heartbeat:
    conversation: UUID
    counter: int


@dataclass(frozen=True, slots=True)
class HeartbeatAck:
    conversation: UUID
    counter: int


@dataclass(frozen=True, slots=True)
class Data:
    conversation: UUID
    seq: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class DataAck:
    """Cumulative: every message up to and including ``up_to_seq`` was delivered."""

    conversation: UUID
    up_to_seq: int


@dataclass(frozen=True, slots=True)
class RotationRequest:
    conversation: UUID
    key_share: bytes


@dataclass(frozen=True, slots=True)
class RotationResponse:
    conversation: UUID
    key_share: bytes
    authentic: bool = True


@dataclass(frozen=True, slots=True)
class RotationConfirm:
    conversation: UUID
    confirmation: bytes


@dataclass(frozen=True, slots=True)
class Close:
    """The sender closed the session (decision 17). On a real transport it travels only sealed
    under the session keys (transports/sealed.py), so only the peer can send it; it is resent
    until a ``CloseAck`` comes or the close lingers out."""

    conversation: UUID


@dataclass(frozen=True, slots=True)
class CloseAck:
    """The sender's side of the session is closed too: it got the peer's ``Close``."""

    conversation: UUID


Frame = (
    HandshakeRequest
    | HandshakeResponse
    | HandshakeAck
    | Heartbeat
    | HeartbeatAck
    | Data
    | DataAck
    | RotationRequest
    | RotationResponse
    | RotationConfirm
    | Close
    | CloseAck
)


# Frames that a real transport carries only sealed under the session keys (transports/
# sealed.py): whoever sends one holds the keys. A close must be as unforgeable as the data it
# ends (decision 17).
CHANNEL_FRAMES = (Data, DataAck, Heartbeat, HeartbeatAck, Close, CloseAck)


@dataclass(frozen=True, slots=True)
class Send:
    """Put ``frame`` on the wire to ``peer_did`` (over the session's current transport)."""

    peer_did: str
    frame: Frame
    transport: str = "quic"


@dataclass(frozen=True, slots=True)
class Deliver:
    """Hand a message to the application: exactly once, in order. ``answered``: the
    ``answer`` of ``SessionManager.receive_each`` took it and queued its answer (decision 23);
    the application has seen it already."""

    session_id: UUID
    seq: int
    payload: bytes
    answered: bool = False


Output = Send | Deliver
