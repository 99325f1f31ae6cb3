"""A sans-IO TLS client: ``ssl.SSLObject`` over two memory BIOs, shaped for the receive hot path.

``trio.SSLStream.receive_some`` hands out the plaintext of at most one TLS record per call, and
exchanges write one WebSocket frame per record, so behind it every frame made the whole trip
from socket to subscriber alone, however many had arrived. This object is fed whatever one
socket read returned and :meth:`TLSClient.read` decrypts every complete record in it at once
(as asyncio's SSL protocol does), so one wakeup carries the whole batch. Like :mod:`feedd.wire.wsframe`
it owns no socket, clock or task: bytes in, plaintext and bytes to send out.

Outgoing bytes leave in the order TLS produced them only if whoever takes them from this object
also writes them before anyone else takes more: :meth:`TLSClient.send` and
:meth:`TLSClient.data_to_send` hand out everything pending, and a read that made TLS answer
(TLS 1.3 post-handshake messages) leaves its answer pending and says so
(:attr:`Decrypted.wants_write`), so a caller with concurrent writers takes and writes under one lock.
"""

from __future__ import annotations

import ssl
from typing import Final, Literal

import attrs

from feedd.errors import TLSError

#: plaintext asked of OpenSSL per call; it returns one record's (at most 16 KiB) per call anyway
_READ_SIZE: Final = 64 * 1024

#: how the peer ended TLS: a ``close_notify`` alert, or the stream's end without one (truncation)
End = Literal["close_notify", "eof"]


@attrs.frozen
class Decrypted:
    """What one :meth:`TLSClient.read` found: the plaintext of every complete record, in order,
    how the peer ended TLS if it did, and whether TLS now has bytes to write back
    (:meth:`TLSClient.data_to_send`)."""

    data: bytes
    end: End | None = None
    wants_write: bool = False


class TLSClient:
    """The client side of one TLS connection: SNI and certificate checks as ``context`` says.

    Usage: call :meth:`handshake` and write :meth:`data_to_send` until it returns True, feeding
    every socket read to :meth:`receive_data`; then :meth:`read` after each socket read and
    :meth:`send` for each outgoing message. ``b""`` fed to :meth:`receive_data` is the end of the
    socket's stream.

    The peer's ``close_notify`` and a truncated stream are told apart here, not by OpenSSL's
    errors: a context with ``ssl.OP_IGNORE_UNEXPECTED_EOF`` (CPython sets it by default on some
    releases with OpenSSL 3, e.g. Debian 12's 3.11.2) makes OpenSSL report the end of the stream
    without ``close_notify`` as a clean close, an empty read like the alert's. So the end of the
    socket's stream is not handed to OpenSSL while it still has bytes to read: an empty read
    before that is the alert, found in the bytes themselves; the stream ending once every byte
    was read without one is truncation. The handshake alone is told of the end (it fails then).
    """

    def __init__(self, context: ssl.SSLContext, server_hostname: str | None) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        # server_hostname: SNI, and the name the certificate must match when the context checks
        self._ssl = context.wrap_bio(self._incoming, self._outgoing, server_hostname=server_hostname)
        self.handshake_done = False
        self._error: TLSError | None = None
        self._end: End | None = None
        #: the socket's stream has ended (kept from OpenSSL's BIO: see the class's notes)
        self._stream_ended = False

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Bytes read from the socket; ``b""`` when the socket's stream has ended."""
        if data:
            self._incoming.write(data)
        else:
            self._stream_ended = True

    def data_to_send(self) -> bytes:
        """Everything TLS produced for the wire so far and the caller has not taken yet."""
        return self._outgoing.read()

    def handshake(self) -> bool:
        """Advance the handshake with the bytes received so far; True once it is complete.

        Raises :class:`TLSError` when it fails (a certificate that does not verify, a name that
        does not match, no common protocol, or the stream ending in the middle).
        """
        if self.handshake_done:
            return True
        try:
            try:
                self._ssl.do_handshake()
            except ssl.SSLWantReadError:
                if not self._stream_ended:
                    return False
                # it wants more and there is none: let OpenSSL see the end, and fail on it
                self._incoming.write_eof()
                self._ssl.do_handshake()
        except ssl.SSLError as exc:
            raise _error(exc) from exc
        self.handshake_done = True
        return True

    def read(self) -> Decrypted:
        """Decrypt every complete record received so far.

        A failure after good records returns those first and is raised by the next call, so
        nothing the peer sent validly is lost; likewise the end of TLS is reported together with
        the plaintext that preceded it. After the end, reads return nothing.
        """
        if self._error is not None:
            raise self._error
        if self._end is not None:
            return Decrypted(b"", self._end)
        read = self._ssl.read
        incoming = self._incoming
        chunks: list[bytes] = []
        append = chunks.append
        try:
            # Read while the BIO holds bytes: the last complete record leaves it empty, which
            # spares the SSLWantReadError (an exception per read) when records arrived whole.
            while incoming.pending:
                if not (chunk := read(_READ_SIZE)):
                    # OpenSSL has not been told the stream ended (receive_data keeps it), so
                    # this is the alert itself, whatever OP_IGNORE_UNEXPECTED_EOF says
                    self._end = "close_notify"
                    break
                append(chunk)
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            self._end = "close_notify"  # what an empty read means, should OpenSSL raise it
        except ssl.SSLError as exc:
            error = _error(exc)
            if not chunks:
                raise error from exc
            self._error = error
        if self._end is None and self._error is None and self._stream_ended:
            # every byte received is read, no close_notify among them, and no more will come
            self._end = "eof"
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return Decrypted(data, self._end, self._outgoing.pending > 0)

    def send(self, data: bytes) -> bytes:
        """Encrypt ``data``; returns every byte now due on the wire, earlier pending ones first."""
        view = memoryview(data)
        write = self._ssl.write
        try:
            while view:
                view = view[write(view) :]
        except ssl.SSLError as exc:
            raise _error(exc) from exc
        return self._outgoing.read()

    def close(self) -> bytes:
        """Our ``close_notify`` (with anything still pending), to write before closing the socket."""
        try:
            self._ssl.unwrap()
        except ssl.SSLWantReadError:
            pass  # the peer's close_notify is not awaited: we close the socket next
        except ssl.SSLError as exc:
            raise _error(exc) from exc
        return self._outgoing.read()


def _error(exc: ssl.SSLError) -> TLSError:
    error = TLSError(str(exc))
    error.__cause__ = exc
    return error
