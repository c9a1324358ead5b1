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
(RFC 8446 §4.6.1); every handshake brings a new one. Both stores are bounded, oldest out,
and held in memory: a restarted process starts with none, and its first connection to each
server takes a full handshake.
"""

from __future__ import annotations

import datetime
import ssl
from collections import OrderedDict
from collections.abc import Hashable

from aioquic.quic.configuration import QuicConfiguration
from aioquic.tls import SessionTicket
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
    """The latest ticket from each server, by the server's address, each taken once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._tickets: OrderedDict[K, SessionTicket] = OrderedDict()

    def remember(self, server: K, ticket: SessionTicket) -> None:
        self._tickets[server] = ticket
        self._tickets.move_to_end(server)
        while len(self._tickets) > self.limit:
            self._tickets.popitem(last=False)

    def take(self, server: K) -> SessionTicket | None:
        ticket = self._tickets.pop(server, None)
        return ticket if ticket is not None and ticket.is_valid else None

    def __contains__(self, server: K) -> bool:
        return server in self._tickets

    def __len__(self) -> int:
        return len(self._tickets)
