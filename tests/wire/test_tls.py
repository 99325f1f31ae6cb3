"""The sans-IO TLS client, driven with literal bytes against an ``ssl.SSLObject`` server.

No sockets: the server is OpenSSL's own server side over memory BIOs, so every byte the client
sees is one the test chose to hand it, split and batched as the test likes. The last test pipes
recorded Binance traffic through today's reader (``trio.SSLStream``) and through this one and
checks that the same records come out.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio
import trio.testing
import trustme

from feedd.errors import TLSError
from feedd.exchanges.binance import BinanceSpot
from feedd.model import Message
from feedd.sim.protocol import frame_header
from feedd.wire import wsframe
from feedd.wire.tls import Decrypted, TLSClient

RECORDED = (
    Path(__file__).parents[1] / "fixtures" / "binance" / "recorded_spot_trade_bookticker_2024-08-08.ndjson"
)
RECEIVED = datetime(2024, 8, 8, 23, 54, 15, 343120, tzinfo=UTC)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_context(ca: trustme.CA, name: str = "localhost") -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(context)
    return context


def client_context(ca: trustme.CA | None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if ca is not None:
        ca.configure_trust(context)
    return context


class Server:
    """OpenSSL's server side over memory BIOs: what it writes is only bytes until handed over."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.sni: list[str | None] = []
        context.sni_callback = lambda _obj, name, _ctx: self.sni.append(name)
        self.ssl = context.wrap_bio(self.incoming, self.outgoing, server_side=True)

    def step(self) -> None:
        with contextlib.suppress(ssl.SSLWantReadError):
            self.ssl.do_handshake()

    def records(self, *payloads: bytes) -> bytes:
        """Each payload written on its own, so each becomes its own record(s); the wire bytes."""
        for payload in payloads:
            self.ssl.write(payload)
        return self.outgoing.read()

    def receive(self, data: bytes) -> bytes:
        """Feed client bytes; the plaintext they carried (post-handshake messages processed)."""
        self.incoming.write(data)
        out = b""
        try:
            while chunk := self.ssl.read(65536):
                out += chunk
        except ssl.SSLWantReadError:
            pass
        return out


def connect(client: TLSClient, server: Server) -> None:
    """Shuttle handshake bytes both ways until the client is done."""
    for _ in range(10):
        done = client.handshake()
        server.incoming.write(client.data_to_send())
        server.step()
        if done:
            break
        client.receive_data(server.outgoing.read())
    assert client.handshake_done
    # TLS 1.3 sends its session tickets after the handshake: take them now, as a read would
    client.receive_data(server.outgoing.read())
    assert client.read() == Decrypted(b"")


@pytest.fixture
def pair(ca: trustme.CA) -> tuple[TLSClient, Server]:
    server = Server(server_context(ca))
    client = TLSClient(client_context(ca), "localhost")
    connect(client, server)
    return client, server


def test_handshake_sends_the_server_name_and_verifies_the_certificate(ca: trustme.CA) -> None:
    server = Server(server_context(ca))
    client = TLSClient(client_context(ca), "localhost")
    connect(client, server)
    assert server.sni == ["localhost"]
    assert server.ssl.version() == "TLSv1.3"


def test_many_records_in_one_read_come_out_of_one_call(pair: tuple[TLSClient, Server]) -> None:
    client, server = pair
    payloads = [bytes([65 + i % 26]) * 200 for i in range(100)]
    client.receive_data(server.records(*payloads))
    assert client.read() == Decrypted(b"".join(payloads))
    assert client.read() == Decrypted(b"")


def record_ends(wire: bytes) -> list[int]:
    """Where each TLS record of ``wire`` ends (5-byte header: type, version, 2-byte length)."""
    ends, pos = [], 0
    while pos < len(wire):
        pos += 5 + int.from_bytes(wire[pos + 3 : pos + 5], "big")
        ends.append(pos)
    assert pos == len(wire)
    return ends


def test_records_split_at_every_byte_boundary(ca: trustme.CA) -> None:
    payloads = [b"first record", b"s" * 40, b"third"]

    def fresh() -> tuple[TLSClient, bytes]:
        server = Server(server_context(ca))
        client = TLSClient(client_context(ca), "localhost")
        connect(client, server)
        return client, server.records(*payloads)

    _, wire = fresh()
    ends = record_ends(wire)
    assert len(ends) == len(payloads)
    for split in range(1, len(wire)):
        client, again = fresh()
        assert len(again) == len(wire)
        client.receive_data(again[:split])
        before = client.read().data
        client.receive_data(again[split:])
        after = client.read().data
        # exactly the records complete before the split come out, the rest once it is whole
        complete = sum(1 for end in ends if end <= split)
        assert before == b"".join(payloads[:complete])
        assert after == b"".join(payloads[complete:])


def test_records_fed_one_byte_at_a_time_come_out_whole(pair: tuple[TLSClient, Server]) -> None:
    client, server = pair
    payloads = [b"a" * 10, b"b" * 3000, b"c"]
    wire = server.records(*payloads)
    out: list[bytes] = []
    for i in range(len(wire)):
        client.receive_data(wire[i : i + 1])
        if data := client.read().data:
            out.append(data)
    assert out == payloads


def test_a_frame_spread_over_several_records_is_one_message(pair: tuple[TLSClient, Server]) -> None:
    client, server = pair
    body = ("x" * 40_000).encode()  # over 16 KiB: OpenSSL itself cuts it into records too
    frame = frame_header(len(body)) + body
    wire = server.records(frame[:1], frame[1:5000], frame[5000:])
    protocol = wsframe.ClientProtocol()
    client.receive_data(wire)
    protocol.receive_data(client.read().data)
    assert protocol.read().messages == [body.decode()]


def test_close_notify_in_the_middle_of_a_batch_ends_after_the_records_before_it(
    pair: tuple[TLSClient, Server],
) -> None:
    client, server = pair
    wire = server.records(b"one", b"two")
    with pytest.raises(ssl.SSLWantReadError):
        server.ssl.unwrap()  # writes close_notify, then would wait for ours
    wire += server.outgoing.read()
    client.receive_data(wire + b"\x17\x03\x03\x00\x05junk")  # bytes after close_notify are ignored
    assert client.read() == Decrypted(b"onetwo", end="close_notify")
    assert client.read() == Decrypted(b"", end="close_notify")


def test_stream_ending_without_close_notify_is_reported_as_truncated(pair: tuple[TLSClient, Server]) -> None:
    client, server = pair
    wire = server.records(b"whole", b"cut short")
    client.receive_data(wire[:-4])
    client.receive_data(b"")
    got = client.read()  # (OpenSSL also has an alert to send: harmless, the peer is gone)
    assert (got.data, got.end) == (b"whole", "eof")
    assert client.read() == Decrypted(b"", end="eof")


# How the peer ended must not depend on the context's OP_IGNORE_UNEXPECTED_EOF: CPython sets it
# by default on some releases (Debian 12's 3.11.2 with OpenSSL 3.0) and not on others (3.11.7,
# 3.12, 3.13), and with it set OpenSSL reports a truncated stream as a clean close. Each test
# below runs with the option set and cleared, so every Python checks both.
IGNORE_UNEXPECTED_EOF = {"set": True, "cleared": False}
Pair = tuple[TLSClient, Server]


@pytest.fixture(params=list(IGNORE_UNEXPECTED_EOF))
def either_eof_option(request: pytest.FixtureRequest, ca: trustme.CA) -> Pair:
    context = client_context(ca)
    if IGNORE_UNEXPECTED_EOF[request.param]:
        context.options |= ssl.OP_IGNORE_UNEXPECTED_EOF
    else:
        context.options &= ~ssl.OP_IGNORE_UNEXPECTED_EOF
    server = Server(server_context(ca))
    client = TLSClient(context, "localhost")
    connect(client, server)
    return client, server


def close_notify(server: Server) -> bytes:
    with pytest.raises(ssl.SSLWantReadError):
        server.ssl.unwrap()  # writes close_notify, then would wait for ours
    return server.outgoing.read()


@pytest.mark.parametrize("cut", [4, 0], ids=["inside-a-record", "at-a-record-boundary"])
def test_truncation_with_the_end_in_the_same_batch_as_the_data_is_eof(
    either_eof_option: Pair, cut: int
) -> None:
    client, server = either_eof_option
    wire = server.records(b"whole", b"last")
    client.receive_data(wire[: len(wire) - cut])
    client.receive_data(b"")
    expected = b"whole" if cut else b"wholelast"
    assert client.read() == Decrypted(expected, end="eof")
    assert client.read() == Decrypted(b"", end="eof")


@pytest.mark.parametrize("cut", [4, 0], ids=["inside-a-record", "at-a-record-boundary"])
def test_truncation_after_the_data_was_read_is_eof(either_eof_option: Pair, cut: int) -> None:
    client, server = either_eof_option
    wire = server.records(b"whole", b"last")
    client.receive_data(wire[: len(wire) - cut])
    assert client.read() == Decrypted(b"whole" if cut else b"wholelast")
    client.receive_data(b"")  # the TCP close comes with the next socket read
    assert client.read() == Decrypted(b"", end="eof")


def test_the_end_right_after_the_handshake_is_eof(either_eof_option: Pair) -> None:
    client, _ = either_eof_option
    client.receive_data(b"")
    assert client.read() == Decrypted(b"", end="eof")


def test_close_notify_and_the_end_in_one_batch_is_close_notify(either_eof_option: Pair) -> None:
    client, server = either_eof_option
    wire = server.records(b"one", b"two") + close_notify(server)
    client.receive_data(wire)
    client.receive_data(b"")
    assert client.read() == Decrypted(b"onetwo", end="close_notify")
    assert client.read() == Decrypted(b"", end="close_notify")


def test_close_notify_read_before_the_end_stays_close_notify(either_eof_option: Pair) -> None:
    client, server = either_eof_option
    client.receive_data(server.records(b"one"))
    assert client.read() == Decrypted(b"one")
    client.receive_data(close_notify(server))
    assert client.read() == Decrypted(b"", end="close_notify")
    client.receive_data(b"")  # and then the TCP close
    assert client.read() == Decrypted(b"", end="close_notify")


def test_close_notify_fed_a_byte_at_a_time_is_close_notify(either_eof_option: Pair) -> None:
    client, server = either_eof_option
    wire = server.records(b"one") + close_notify(server)
    ends = []
    for i in range(len(wire)):
        client.receive_data(wire[i : i + 1])
        ends.append(client.read().end)
    client.receive_data(b"")
    assert ends[-1] == "close_notify"
    assert set(ends[:-1]) == {None}
    assert client.read() == Decrypted(b"", end="close_notify")


def test_the_stream_ending_in_the_handshake_fails_it_whatever_the_eof_option(ca: trustme.CA) -> None:
    for ignore in IGNORE_UNEXPECTED_EOF.values():
        context = client_context(ca)
        if ignore:
            context.options |= ssl.OP_IGNORE_UNEXPECTED_EOF
        else:
            context.options &= ~ssl.OP_IGNORE_UNEXPECTED_EOF
        server = Server(server_context(ca))
        client = TLSClient(context, "localhost")
        client.handshake()
        server.incoming.write(client.data_to_send())
        server.step()
        client.receive_data(server.outgoing.read()[:-1])
        client.receive_data(b"")
        with pytest.raises(TLSError):
            client.handshake()


def test_a_corrupt_record_after_good_ones_is_raised_after_they_are_returned(
    pair: tuple[TLSClient, Server],
) -> None:
    client, server = pair
    good = server.records(b"good")
    bad = bytearray(server.records(b"bad"))
    bad[-1] ^= 1
    client.receive_data(good + bytes(bad))
    assert client.read().data == b"good"
    with pytest.raises(TLSError, match="BAD_RECORD_MAC"):
        client.read()
    with pytest.raises(TLSError):
        client.read()  # the session stays failed


def test_a_handshake_that_never_completes_stays_pending(ca: trustme.CA) -> None:
    server = Server(server_context(ca))
    client = TLSClient(client_context(ca), "localhost")
    assert client.handshake() is False
    server.incoming.write(client.data_to_send())  # the ClientHello
    server.step()
    flight = server.outgoing.read()
    client.receive_data(flight[:-1])  # the server's flight, one byte short, forever
    for _ in range(3):
        assert client.handshake() is False
        assert client.data_to_send() == b""
    client.receive_data(b"")  # and then the connection ends
    with pytest.raises(TLSError, match="EOF"):
        client.handshake()


def test_a_certificate_that_does_not_verify_fails_the_handshake(ca: trustme.CA) -> None:
    server = Server(server_context(ca))
    client = TLSClient(client_context(None), "localhost")  # the test CA is not trusted
    with pytest.raises(TLSError, match="CERTIFICATE_VERIFY_FAILED") as caught:
        connect(client, server)
    assert isinstance(caught.value.__cause__, ssl.SSLCertVerificationError)


def test_a_certificate_for_another_name_fails_the_handshake(ca: trustme.CA) -> None:
    server = Server(server_context(ca, name="other.example"))
    client = TLSClient(client_context(ca), "localhost")
    with pytest.raises(TLSError, match=r"CERTIFICATE_VERIFY_FAILED.*[Hh]ostname mismatch"):
        connect(client, server)


def test_bytes_tls_answers_while_reading_are_handed_out(ca: trustme.CA) -> None:
    """TLS 1.3 post-handshake messages: here the server asks for the client's certificate after
    the handshake, which the client answers from inside a read; the answer must reach the wire."""
    context = server_context(ca)
    context.verify_mode = ssl.CERT_OPTIONAL
    context.post_handshake_auth = True  # ask for the client's certificate only when told to
    ca.configure_trust(context)
    server = Server(context)
    client_ctx = client_context(ca)
    client_ctx.post_handshake_auth = True
    ca.issue_cert("feedd-client").configure_cert(client_ctx)
    client = TLSClient(client_ctx, "localhost")
    connect(client, server)
    assert server.ssl.getpeercert() is None

    server.ssl.verify_client_post_handshake()
    client.receive_data(server.records(b"after the request"))
    got = client.read()
    assert got.data == b"after the request"
    assert got.wants_write, "the client's certificate and Finished are due"
    server.receive(client.data_to_send())
    assert server.ssl.getpeercert() is not None


def test_sent_messages_reach_the_server_and_close_sends_close_notify(pair: tuple[TLSClient, Server]) -> None:
    client, server = pair
    assert server.receive(client.send(b"hello ") + client.send(b"x" * 70_000)) == b"hello " + b"x" * 70_000
    server.incoming.write(client.close())
    assert server.ssl.read(10) == b""  # OpenSSL's empty read: the peer's close_notify


# ---- today's reader and this one, side by side ------------------------------------------------


def recorded_frames() -> Iterator[bytes]:
    """The recorded Binance lines as server text frames."""
    for line in RECORDED.read_bytes().splitlines():
        yield frame_header(len(line)) + line


def records_of(messages: list[Message]) -> list[object]:
    session = BinanceSpot().new_session()
    return [event for message in messages for event in session.decode(message, RECEIVED)]


async def test_records_come_out_identical_to_trio_sslstream(ca: trustme.CA) -> None:
    """One TLS record per frame, as exchanges write them, read by both; the same records result."""
    frames = list(recorded_frames())

    # today: trio.SSLStream over an in-memory stream pair
    client_stream, server_stream = trio.testing.memory_stream_pair()
    today_client = trio.SSLStream(client_stream, client_context(ca), server_hostname="localhost")
    today_server = trio.SSLStream(server_stream, server_context(ca), server_side=True)
    today = wsframe.ClientProtocol()
    messages_today: list[Message] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(today_server.do_handshake)
        await today_client.do_handshake()

        async def write() -> None:
            for frame in frames:
                await today_server.send_all(frame)
            await today_server.aclose()

        nursery.start_soon(write)
        while data := await today_client.receive_some(65536):
            today.receive_data(data)
            messages_today += today.read().messages

    # now: tls.TLSClient over literal bytes, everything written at once and read in one call
    server = Server(server_context(ca))
    client = TLSClient(client_context(ca), "localhost")
    connect(client, server)
    client.receive_data(server.records(*frames))
    protocol = wsframe.ClientProtocol()
    protocol.receive_data(client.read().data)
    messages_now = protocol.read().messages

    assert len(messages_now) == len(frames) == 300
    assert messages_now == messages_today
    assert records_of(messages_now) == records_of(messages_today)
