"""What TLS is asked to do for a QUIC link: a certificate nobody checks, ALPN ``l2s/1``, and
session tickets for 0-RTT (docs/transports.md, "QUIC").

Identity is the L2 handshake's, not TLS's. Each endpoint makes a fresh Ed25519 key and a
self-signed certificate for it when it starts, derived from nothing and bound to nothing:
the node's identity key signs L2 handshake transcripts only, and clients do not verify the
server's certificate (``verify_mode`` CERT_NONE), so a certificate tied to the DID would
prove nothing anyone checks. TLS still gives the link confidentiality (of the hello and
of frame metadata: lengths, kinds, conversation ids), integrity, and QUIC's congestion
control, anti-amplification and address validation.

Tickets. A server's tickets are opaque random ids into its own memory (aioquic's
``session_ticket_fetcher`` and ``_handler``); ``ServerTickets`` hands each out once — a
ticket's 0-RTT data is accepted on its first use only (RFC 8446 §8.1, single-use tickets),
so a replayed first flight finds no ticket and its 0-RTT data is never decrypted. A client
keeps the latest ticket per server address in ``ClientTickets`` and uses each once
(RFC 8446 §4.6.1); every handshake brings a new one. Both stores are bounded, oldest out.
The server's are in memory. The client's may be kept in a file (``ClientTickets(path=)``,
``TcpNode(quic_tickets=)``), so that a restarted node's first connection to a server it knew
resumes TLS in 0-RTT, and its L2 RESUME rides the first flight: the file holds each ticket's
resumption secret, so it is written as the key store is (owner only, replaced atomically),
and rewritten whenever a ticket is added or taken, so a ticket used before a crash is not
used again after it. A file that cannot be read is logged and set aside: tickets are a cache.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import secrets
import ssl
from collections import OrderedDict
from collections.abc import Hashable
from pathlib import Path
from typing import Any

from aioquic.quic.configuration import QuicConfiguration
from aioquic.tls import CipherSuite, SessionTicket
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID
from l2_session.transports.quic_settings import ALPN, QuicSettings

CERTIFICATE_DAYS = 365  # longer than a process lives; nobody checks it anyway


def self_signed_certificate() -> tuple[x509.Certificate, ed25519.Ed25519PrivateKey]:
    """A fresh Ed25519 key and a certificate it signs for itself."""
    key = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "l2s")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=CERTIFICATE_DAYS))
        .sign(key, None)
    )
    return certificate, key


def configuration(
    settings: QuicSettings,
    *,
    is_client: bool,
    certificate: tuple[x509.Certificate, ed25519.Ed25519PrivateKey] | None = None,
    server_name: str | None = None,
    session_ticket: SessionTicket | None = None,
) -> QuicConfiguration:
    """aioquic's configuration for one side. Streams only, no DATAGRAM frames
    (``max_datagram_frame_size`` unset: a peer that sends one breaks the protocol)."""
    config = QuicConfiguration(
        alpn_protocols=[ALPN],
        is_client=is_client,
        idle_timeout=settings.idle_timeout_s,
        # The one stream's credit; the connection's is aioquic's (it grows as data arrives).
        max_stream_data=settings.receive_window,
        max_data=2 * settings.receive_window,
        server_name=server_name,
        session_ticket=session_ticket,
        verify_mode=ssl.CERT_NONE,
    )
    if certificate is not None:
        config.certificate, config.private_key = certificate
    return config


K = Hashable


class ServerTickets:
    """The tickets a server issued, by id, each returned once (single use)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._tickets: OrderedDict[bytes, SessionTicket] = OrderedDict()
        self.issued = 0
        self.used = 0
        self.unknown = 0
        """Tickets presented that this server does not hold (used before, forgotten, or from
        another process): those connections take a full handshake and no 0-RTT."""

    def add(self, ticket: SessionTicket) -> None:
        self._tickets[ticket.ticket] = ticket
        self.issued += 1
        while len(self._tickets) > self.limit:
            self._tickets.popitem(last=False)

    def take(self, ticket_id: bytes) -> SessionTicket | None:
        ticket = self._tickets.pop(ticket_id, None)
        if ticket is None:
            self.unknown += 1
        else:
            self.used += 1
        return ticket

    def __len__(self) -> int:
        return len(self._tickets)


class ClientTickets:
    """The latest ticket from each server, by the server's address, each taken once; kept
    in ``path`` too, if given (see the module)."""

    def __init__(self, limit: int, path: str | Path | None = None) -> None:
        self.limit = limit
        self.path = None if path is None else Path(path)
        self._tickets: OrderedDict[K, SessionTicket] = OrderedDict()
        if self.path is not None and self.path.exists():
            self._load(self.path)

    def remember(self, server: K, ticket: SessionTicket) -> None:
        self._tickets[server] = ticket
        self._tickets.move_to_end(server)
        while len(self._tickets) > self.limit:
            self._tickets.popitem(last=False)
        self._save()

    def take(self, server: K) -> SessionTicket | None:
        ticket = self._tickets.pop(server, None)
        if ticket is not None:
            self._save()  # taken: not to be used again, after a crash either
        return ticket if ticket is not None and ticket.is_valid else None

    # -- the file: JSON, one entry per server address -------------------------------------
    def _load(self, path: Path) -> None:
        try:
            entries = json.loads(path.read_text())
            for entry in entries[-self.limit :]:
                server = tuple(entry["server"]) if isinstance(entry["server"], list) else None
                if server is None:
                    raise ValueError(f"server {entry['server']!r} is not [host, port]")
                self._tickets[server] = _ticket_from_json(entry["ticket"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            log.warning("QUIC tickets in %s not read (%s): starting without", path, error)
            self._tickets.clear()

    def _save(self) -> None:
        if self.path is None:
            return
        entries = [
            {"server": list(server) if isinstance(server, tuple) else server,
             "ticket": _ticket_to_json(ticket)}
            for server, ticket in self._tickets.items()
        ]  # fmt: skip
        tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(6)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(entries, f)
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def __contains__(self, server: K) -> bool:
        return server in self._tickets

    def __len__(self) -> int:
        return len(self._tickets)


log = logging.getLogger("l2_session.transport.quic")


def _ticket_to_json(ticket: SessionTicket) -> dict[str, Any]:
    return {
        "age_add": ticket.age_add, "cipher_suite": int(ticket.cipher_suite),
        "not_valid_after": ticket.not_valid_after.isoformat(),
        "not_valid_before": ticket.not_valid_before.isoformat(),
        "resumption_secret": ticket.resumption_secret.hex(), "server_name": ticket.server_name,
        "ticket": ticket.ticket.hex(), "max_early_data_size": ticket.max_early_data_size,
        "other_extensions": [[kind, data.hex()] for kind, data in ticket.other_extensions],
    }  # fmt: skip


def _ticket_from_json(data: dict[str, Any]) -> SessionTicket:
    return SessionTicket(
        age_add=int(data["age_add"]), cipher_suite=CipherSuite(int(data["cipher_suite"])),
        not_valid_after=datetime.datetime.fromisoformat(data["not_valid_after"]),
        not_valid_before=datetime.datetime.fromisoformat(data["not_valid_before"]),
        resumption_secret=bytes.fromhex(data["resumption_secret"]),
        server_name=str(data["server_name"]), ticket=bytes.fromhex(data["ticket"]),
        max_early_data_size=data["max_early_data_size"],
        other_extensions=[(int(k), bytes.fromhex(v)) for k, v in data["other_extensions"]],
    )  # fmt: skip
