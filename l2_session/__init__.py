"""l2-session: sovereign, cryptographically verified peer-to-peer sessions (SPEC-018).

Every session transition is an immutable event, BLAKE3-hash-chained and Ed25519-signed, in an
append-only ledger (SQLite, or PostgreSQL); a session's state is rebuilt by replaying its
events. Handshakes are post-quantum hybrid (X25519 + ML-KEM-768); sessions run over QUIC with
framed TCP (μTCP) as the fallback.

Two nodes exchanging a message (the README's example)::

    import asyncio
    from l2_session import Node

    async def main():
        bob_files = dict(identity="bob.keys", ledger="bob.sqlite3")
        async with Node.open(**bob_files, listen="127.0.0.1:0") as bob:
            async with Node.open(identity="alice.keys", ledger="alice.sqlite3") as alice:
                session = await alice.establish(bob.did, addresses=bob.addresses)
                await session.send(b"hello, bob")
                message = await (await bob.accept()).receive()
                print(message.data.decode(), "- over", session.transport)

    asyncio.run(main())

Start with ``Node`` (``Node.open``) and ``Session``.

The names here are the public API. The layers beneath are sub-packages, for users who run
their own loop or read the ledger directly: ``l2_session.domain`` (the sans-I/O state machine
and ``SessionManager``), ``l2_session.infrastructure`` (the signed ledger, keys, clocks),
``l2_session.projections`` (read models), ``l2_session.transports`` and ``l2_session.tools``
(the ``l2-session`` CLI).
"""

import importlib as _importlib
import typing as _typing

if _typing.TYPE_CHECKING:
    from l2_session.domain.session.config import SessionConfig
    from l2_session.domain.session.errors import (
        AuthenticationFailed,
        CloseReason,
        ConfigError,
        FailureReason,
        InvalidState,
        KeyRotationFailed,
        MessageTooLarge,
        NothingToResume,
        PeerQuarantined,
        SessionClosed,
        SessionError,
        Timeout,
        TransportFailed,
        UnknownSession,
    )
    from l2_session.domain.session.states import State
    from l2_session.infrastructure.keystore import KeyStore, KeyStoreError
    from l2_session.infrastructure.ledger import SessionLedger
    from l2_session.infrastructure.ledger.verify import verify
    from l2_session.node import CLOSED, Addresses, Message, Node, Session, StateChange
    from l2_session.transports.tcp import NodeClosed

__version__ = "0.1.0"

_PUBLIC: dict[str, str] = {  # name -> the module it is defined in
    "SessionConfig": "l2_session.domain.session.config",
    "AuthenticationFailed": "l2_session.domain.session.errors",
    "CloseReason": "l2_session.domain.session.errors",
    "ConfigError": "l2_session.domain.session.errors",
    "FailureReason": "l2_session.domain.session.errors",
    "InvalidState": "l2_session.domain.session.errors",
    "KeyRotationFailed": "l2_session.domain.session.errors",
    "MessageTooLarge": "l2_session.domain.session.errors",
    "NothingToResume": "l2_session.domain.session.errors",
    "PeerQuarantined": "l2_session.domain.session.errors",
    "SessionClosed": "l2_session.domain.session.errors",
    "SessionError": "l2_session.domain.session.errors",
    "Timeout": "l2_session.domain.session.errors",
    "TransportFailed": "l2_session.domain.session.errors",
    "UnknownSession": "l2_session.domain.session.errors",
    "State": "l2_session.domain.session.states",
    "KeyStore": "l2_session.infrastructure.keystore",
    "KeyStoreError": "l2_session.infrastructure.keystore",
    "SessionLedger": "l2_session.infrastructure.ledger",
    "verify": "l2_session.infrastructure.ledger.verify",
    "Addresses": "l2_session.node",
    "CLOSED": "l2_session.node",
    "Message": "l2_session.node",
    "Node": "l2_session.node",
    "Session": "l2_session.node",
    "StateChange": "l2_session.node",
    "NodeClosed": "l2_session.transports.tcp",
}

__all__ = [
    "CLOSED",
    "Addresses",
    "AuthenticationFailed",
    "CloseReason",
    "ConfigError",
    "FailureReason",
    "InvalidState",
    "KeyRotationFailed",
    "KeyStore",
    "KeyStoreError",
    "Message",
    "MessageTooLarge",
    "Node",
    "NodeClosed",
    "NothingToResume",
    "PeerQuarantined",
    "Session",
    "SessionClosed",
    "SessionConfig",
    "SessionError",
    "SessionLedger",
    "State",
    "StateChange",
    "Timeout",
    "TransportFailed",
    "UnknownSession",
    "verify",
]


def __getattr__(name: str) -> _typing.Any:
    """The public names are imported when first used: ``import l2_session.domain...``
    stays as light as that layer (the node's transports load aioquic and TLS)."""
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'l2_session' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
