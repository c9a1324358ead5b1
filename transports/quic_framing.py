"""The bytes of a QUIC link's stream, sans-I/O: what a TCP connection carries, the same way.

A link's one bidirectional stream carries, from the side that dialled::

    hello: u16 length (big-endian) | that many bytes (at most MAX_HELLO)
    frames: u32 length (big-endian) | body, repeated (frames.py; at most MAX_FRAME)

and from the side that accepted, frames only. The hello is what the dialler says about
itself before any frame (a node: its DID, as in TCP's hello); this layer does not read it.

QUIC delivers the stream in pieces of any size; ``FrameReader.feed`` takes them as they come
and returns the bodies they complete, raising ``FrameError`` on a length outside
1..MAX_FRAME or a hello over MAX_HELLO — the stream cannot be resynchronised after that, and
the link is closed. It holds at most one hello or one frame in progress.
"""

from __future__ import annotations

import struct

from l2_session.transports.frames import LENGTH, FrameError, body_length
from l2_session.transports.quic_settings import MAX_HELLO

HELLO_LENGTH = struct.Struct(">H")


def hello_bytes(hello: bytes) -> bytes:
    """``hello`` as the dialler's stream opens with it."""
    if len(hello) > MAX_HELLO:
        raise ValueError(f"a hello of {len(hello)} bytes, at most {MAX_HELLO}")
    return HELLO_LENGTH.pack(len(hello)) + hello


def check_frame(frame: bytes) -> int:
    """The body length of ``frame`` (length prefix and body, as frames.encode and
    sealed.seal write them); ``FrameError`` if the prefix does not say the body's length or
    the body is outside 1..MAX_FRAME."""
    if len(frame) < LENGTH.size:
        raise FrameError(f"a frame of {len(frame)} bytes has no length prefix")
    n = body_length(frame[: LENGTH.size])
    if n != len(frame) - LENGTH.size:
        raise FrameError(f"length prefix says {n}, the body has {len(frame) - LENGTH.size} bytes")
    return n


class FrameReader:
    """Reassembles one direction of a link's stream. ``hello=True`` on the accepting side:
    the stream opens with the dialler's hello, readable as ``.hello`` once complete."""

    def __init__(self, *, hello: bool) -> None:
        self.hello: bytes | None = None if hello else b""
        self._buffer = bytearray()
        self._need = HELLO_LENGTH.size if hello else LENGTH.size
        self._header = True  # _need counts a length prefix, not what follows it

    @property
    def buffered(self) -> int:
        """Bytes held: part of a hello, a length prefix or a frame."""
        return len(self._buffer)

    @property
    def frame_in_progress(self) -> int:
        """The announced body length of the frame being read, 0 between frames."""
        return 0 if self._header or self.hello is None else self._need

    def feed(self, data: bytes) -> list[bytes]:
        """The frame bodies ``data`` completes, in order."""
        bodies: list[bytes] = []
        buffer = self._buffer
        buffer += data
        at = 0
        while len(buffer) - at >= self._need:
            chunk = bytes(buffer[at : at + self._need])
            at += self._need
            if self.hello is None:  # the hello's length, then the hello
                if self._header:
                    self._need = HELLO_LENGTH.unpack(chunk)[0]
                    if self._need > MAX_HELLO:
                        raise FrameError(f"a hello of {self._need} bytes, at most {MAX_HELLO}")
                    self._header = False
                    if self._need:
                        continue
                    chunk = b""
                self.hello, self._need, self._header = chunk, LENGTH.size, True
            elif self._header:
                self._need, self._header = body_length(chunk), False
            else:
                bodies.append(chunk)
                self._need, self._header = LENGTH.size, True
        del buffer[:at]
        return bodies
