"""aioquic's ``QuicConnection`` as a QUIC link needs it (quic_link.py), and every private part
of aioquic this layer touches, in one place.

aioquic has no public API for three things a link needs, so ``FlowControlledConnection``
reaches into its internals (aioquic 1.7.2; the tests in tests/transports/test_quic*.py
exercise each):

- **Receive credit as the application takes data.** aioquic doubles a stream's credit
  (MAX_STREAM_DATA) as data *arrives* (``_write_stream_limits``), whether anyone reads it or
  not. This replaces that method for the link's stream: the credit is what the application
  took (``take``) plus ``receive_window``, sent again each time a quarter window was taken.
- **Stream limits.** MAX_STREAMS is fixed at 128 in aioquic; a link's peer may open one
  bidirectional stream if it is the client, none if it is the server, and no unidirectional
  ones (``_local_max_streams_*``, read when the handshake starts).
- **Memory.** TLS's three 16 KiB output buffers (``_crypto_buffers``) outlive the handshake;
  ``handshake_done`` gives them back.

It also reads the stream's send buffer offsets (bytes not yet acknowledged), the connection
state and its network paths, and parses packet headers with aioquic's private ``Buffer``.
"""

from __future__ import annotations

from typing import Any, cast

from aioquic._buffer import Buffer
from aioquic.quic.connection import (
    MAX_STREAM_DATA_FRAME_CAPACITY,
    QuicConnection,
    QuicConnectionState,
)
from aioquic.quic.packet import QuicFrameType, QuicHeader, pull_quic_header
from aioquic.quic.packet_builder import QuicPacketBuilder
from aioquic.quic.recovery import QuicPacketSpace
from aioquic.quic.stream import QuicStream

STREAM_ID = 0  # the client's first bidirectional stream: the link's one stream
SPENT_BUFFER = 64  # bytes: what is left of a TLS output buffer once the handshake is done


def header_of(datagram: bytes, cid_length: int) -> QuicHeader:
    """The first packet header in ``datagram``; ``ValueError`` if it is not QUIC."""
    return pull_quic_header(Buffer(data=datagram), host_cid_length=cid_length)


class FlowControlledConnection(QuicConnection):
    """aioquic's connection with the link's stream limits and its receive credit tied to
    what the application took (``taken``, bytes of stream 0), not to what arrived."""

    def __init__(self, *, receive_window: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.receive_window = receive_window
        self.taken = 0
        self._grant_due_at = receive_window // 4
        # MAX_STREAMS, read by _serialize_transport_parameters when the handshake starts.
        bidi, uni = self._local_max_streams_bidi, self._local_max_streams_uni
        bidi.value = bidi.sent = 0 if self._is_client else 1
        uni.value = uni.sent = 0

    def _stream(self) -> QuicStream | None:
        return self._streams.get(STREAM_ID)

    def unacknowledged(self) -> int:
        """Bytes written to the stream and not yet acknowledged by the peer."""
        stream = self._stream()
        if stream is None:
            return 0
        return stream.sender._buffer_stop - stream.sender._buffer_start

    def take(self, n: int) -> bool:
        """Count ``n`` bytes of the stream as taken by the application; whether enough were
        taken since the last grant (a quarter window) for a new one to be sent."""
        self.taken += n
        return self.taken >= self._grant_due_at

    def handshake_done(self) -> None:
        """Give back TLS's three 16 KiB output buffers: after the handshake it writes nothing
        more (the server's session ticket went out with the handshake's last message; aioquic
        sends no other post-handshake message)."""
        for epoch in self._crypto_buffers:
            self._crypto_buffers[epoch] = Buffer(capacity=SPENT_BUFFER)

    @property
    def state(self) -> QuicConnectionState:
        return self._state

    @property
    def network_paths(self) -> list[Any]:
        """aioquic's paths to the peer, the one in use first (tests read them)."""
        return self._network_paths

    def _write_stream_limits(
        self, builder: QuicPacketBuilder, space: QuicPacketSpace, stream: QuicStream
    ) -> None:
        # Replaces aioquic's, which doubles the credit as data arrives.
        if stream.stream_id == STREAM_ID and self.taken >= self._grant_due_at:
            stream.max_stream_data_local = self.taken + self.receive_window
            self._grant_due_at = self.taken + self.receive_window // 4
        if stream.max_stream_data_local_sent != stream.max_stream_data_local:
            buf = builder.start_frame(
                QuicFrameType.MAX_STREAM_DATA,
                capacity=MAX_STREAM_DATA_FRAME_CAPACITY,
                handler=self._on_max_stream_data_delivery,
                handler_args=(stream,),
            )
            buf.push_uint_var(cast(int, stream.stream_id))  # a stream of the connection has one
            buf.push_uint_var(stream.max_stream_data_local)
            stream.max_stream_data_local_sent = stream.max_stream_data_local


def invalid_token_close(version: int, destination_cid: bytes, source_cid: bytes) -> bytes:
    """A server Initial closing a connection attempt with INVALID_TOKEN (RFC 9000 §8.1.3),
    for an Initial whose Retry token is not valid at its address: aioquic's own, private to
    its asyncio server."""
    from aioquic.asyncio.server import _encode_invalid_token_close

    packet: bytes = _encode_invalid_token_close(
        version=version, source_cid=destination_cid, destination_cid=source_cid
    )
    return packet
