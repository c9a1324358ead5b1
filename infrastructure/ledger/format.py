"""The ledger's byte formats: what is hashed, what is signed (docs/ledger-format.md).

Everything here is pure and documented byte for byte so that an independent verifier can be
written from docs/ledger-format.md alone. Integers are big-endian; ``lp(x)`` is a 4-byte
big-endian length followed by ``x``.

    event_hash = BLAKE3( "l2-session/ledger/event/v1\\n"
                         || u64 position || lp(session_id) || u64 version || lp(topic)
                         || i64 timestamp_us || lp(payload)
                         || prev_session_hash[32] || prev_global_hash[32] || lp(signer) )
    signature  = Ed25519(signer's key, event_hash)
"""

from __future__ import annotations

import struct

from blake3 import blake3

FORMAT_NAME = "l2-session-ledger"
# 2: the Merkle tree (ledger_tree) and checkpoints as C2SP signed notes over its root.
# 3: ledger_tree keeps the tree's nodes of levels 1 to 3 in tiles, a row per 8 events holding
# the 7 nodes inside them (tree.py); the rest is as in 2. A version-1 ledger is read as it is and
# migrated to 3 when a node opens it to write; a version-2 ledger is read and written as it is
# (a row per node).
# 4: the tree's nodes in the events' rows — the event that completes a node holds its hash in
# the ``tree`` column (ledger_tree stays empty); the rest is as in 3. Versions 2 and 3 are read
# and written as they are; a version-1 ledger is migrated to 3 (its events' rows never change).
FORMAT_VERSION = 4
READABLE_VERSIONS = ("1", "2", "3", "4")

EVENT_DOMAIN = b"l2-session/ledger/event/v1\n"
GENESIS_DOMAIN = b"l2-session/ledger/genesis/v1\n"
SNAPSHOT_DOMAIN = b"l2-session/ledger/snapshot/v1\n"
SEALED_AAD_DOMAIN = b"l2-session/ledger/sealed/v1\n"

HASH_SIZE = 32
SIGNATURE_SIZE = 64
ZERO_HASH = bytes(HASH_SIZE)  # prev_session_hash of a session's first event (version 1)

# Limits (docs/ledger-format.md §Limits). An event over them is refused before anything is written.
MAX_PAYLOAD_BYTES = 64 * 1024
MAX_SEALED_BYTES = 16 * 1024
MAX_TOPIC_BYTES = 256

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_I64 = struct.Struct(">q")


def lp(data: bytes) -> bytes:
    """Length-prefixed bytes: u32 big-endian length, then the bytes."""
    return _U32.pack(len(data)) + data


def genesis_hash(ledger_id: str) -> bytes:
    """The ``prev_global_hash`` of position 1: binds the chain to this ledger's id."""
    return blake3(GENESIS_DOMAIN + lp(ledger_id.encode())).digest()


def event_hash_input(
    position: int,
    session_id: bytes,
    version: int,
    topic: bytes,
    timestamp_us: int,
    payload: bytes,
    prev_session_hash: bytes,
    prev_global_hash: bytes,
    signer_lp: bytes,
) -> bytes:
    """The exact bytes whose BLAKE3 digest is the event hash. ``signer_lp`` is lp(signer)."""
    return event_hash_input_lp(
        position, lp(session_id), version, lp(topic), timestamp_us, payload,
        prev_session_hash, prev_global_hash, signer_lp,
    )  # fmt: skip


def event_hash_input_lp(
    position: int,
    session_id_lp: bytes,
    version: int,
    topic_lp: bytes,
    timestamp_us: int,
    payload: bytes,
    prev_session_hash: bytes,
    prev_global_hash: bytes,
    signer_lp: bytes,
) -> bytes:
    """``event_hash_input`` with the session id, topic and signer already length-prefixed
    (verify() prefixes each once per range, not once per row). The one place the layout is
    spelled out."""
    return b"".join(
        (
            EVENT_DOMAIN,
            _U64.pack(position),
            session_id_lp,
            _U64.pack(version),
            topic_lp,
            _I64.pack(timestamp_us),
            _U32.pack(len(payload)),
            payload,
            prev_session_hash,
            prev_global_hash,
            signer_lp,
        )
    )


# The arguments of event_hash_input, in order: position, session_id, version, topic,
# timestamp_us, payload, prev_session_hash, prev_global_hash, signer_lp.
EventHashFields = tuple[int, bytes, int, bytes, int, bytes, bytes, bytes, bytes]


def event_hash(*fields: *EventHashFields) -> bytes:
    """BLAKE3 of ``event_hash_input(*fields)``: the event hash (same arguments)."""
    return blake3(event_hash_input(*fields)).digest()


def snapshot_hash(
    session_id: bytes, version: int, topic: bytes, state: bytes, head_hash: bytes
) -> bytes:
    """What a snapshot's signature covers: its content and the event hash it was taken at."""
    return blake3(
        b"".join(
            (
                SNAPSHOT_DOMAIN,
                lp(session_id),
                _U64.pack(version),
                lp(topic),
                lp(state),
                head_hash,
            )
        )
    ).digest()


def sealed_aad(session_id: bytes, version: int, field: str) -> bytes:
    """Associated data of a sealed field: it opens only at its own session, version and name."""
    return SEALED_AAD_DOMAIN + lp(session_id) + _U64.pack(version) + lp(field.encode())
