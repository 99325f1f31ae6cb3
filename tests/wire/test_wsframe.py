"""The sans-IO WebSocket client codec, driven with literal bytes (RFC 6455 §5, §7, §4.1).

Server frames are written out byte by byte here; client frames are checked by unmasking them, and
by feeding them to wsproto's server side. wsproto's server also generates random frame sequences
that the codec must decode identically whatever the chunking.
"""

from __future__ import annotations

import base64
import hashlib
import random

import pytest
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, Ping, Pong, TextMessage
from wsproto.events import CloseConnection as WsprotoClose

from feedd.errors import HandshakeError, ProtocolError
from feedd.wire.upgrade import HandshakeRefused
from feedd.wire.wsframe import (
    ClientHandshake,
    ClientProtocol,
    Close,
    Received,
    accept_key,
    encode_binary,
    encode_close,
    encode_frame,
    encode_ping,
    encode_pong,
    encode_text,
    mask,
)


def server_frame(first: int, payload: bytes) -> bytes:
    """An unmasked frame as a server sends it: first byte, minimal length encoding, payload."""
    n = len(payload)
    if n < 126:
        return bytes((first, n)) + payload
    if n < 0x10000:
        return bytes((first, 126)) + n.to_bytes(2, "big") + payload
    return bytes((first, 127)) + n.to_bytes(8, "big") + payload


def unmask_client_frame(frame: bytes) -> tuple[int, bytes]:
    """Parse one client frame (asserting it is masked and complete); return (first byte, payload)."""
    first, second = frame[0], frame[1]
    assert second & 0x80, "client frames must be masked"
    n, pos = second & 0x7F, 2
    if n == 126:
        n, pos = int.from_bytes(frame[2:4], "big"), 4
    elif n == 127:
        n, pos = int.from_bytes(frame[2:10], "big"), 10
    key, payload = frame[pos : pos + 4], frame[pos + 4 :]
    assert len(payload) == n
    return first, bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def read_all(data: bytes, **kwargs: int) -> Received:
    protocol = ClientProtocol(**kwargs)
    protocol.receive_data(data)
    return protocol.read()


# --- lengths -------------------------------------------------------------------------------------


def test_seven_bit_length_text_frame_decodes_to_str() -> None:
    assert read_all(b"\x81\x05hello") == Received(["hello"])


def test_sixteen_bit_length_binary_frame_decodes_to_bytes() -> None:
    payload = bytes(range(256)) * 2
    received = read_all(b"\x82\x7e\x02\x00" + payload)
    assert received.messages == [payload]
    assert type(received.messages[0]) is bytes


def test_sixty_four_bit_length_text_frame() -> None:
    payload = "x" * 70_000
    data = b"\x81\x7f\x00\x00\x00\x00\x00\x01\x11\x70" + payload.encode()
    assert read_all(data).messages == [payload]


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65_535, 65_536, 100_000])
def test_every_length_boundary_decodes(size: int) -> None:
    text = "é" * (size // 2) + "a" * (size % 2)  # multi-byte UTF-8 too
    assert read_all(server_frame(0x81, text.encode())).messages == [text]


def test_empty_read_returns_nothing() -> None:
    assert ClientProtocol().read() == Received([])


# --- buffering -----------------------------------------------------------------------------------


def test_many_frames_in_one_buffer_come_out_in_order() -> None:
    texts = [f'{{"n":{i},"pad":"{"p" * (i % 300)}"}}' for i in range(1000)]
    data = b"".join(server_frame(0x81, t.encode()) for t in texts)
    assert read_all(data).messages == texts


def test_frame_split_byte_by_byte_comes_out_once_complete() -> None:
    frames = [server_frame(0x81, b"a" * 5), server_frame(0x82, b"b" * 300), server_frame(0x81, b"c" * 70_000)]
    data = b"".join(frames)
    boundaries = {sum(map(len, frames[: i + 1])) for i in range(len(frames))}
    protocol = ClientProtocol()
    out: list[str | bytes] = []
    for i in range(len(data)):
        protocol.receive_data(data[i : i + 1])
        got = protocol.read().messages
        assert bool(got) == (i + 1 in boundaries)  # nothing until a frame's last byte
        out += got
    assert out == ["a" * 5, b"b" * 300, "c" * 70_000]


def test_partial_frame_stays_buffered_after_complete_ones() -> None:
    protocol = ClientProtocol()
    tail = server_frame(0x81, b"second")
    protocol.receive_data(server_frame(0x81, b"first") + tail[:3])
    assert protocol.read().messages == ["first"]
    protocol.receive_data(tail[3:])
    assert protocol.read().messages == ["second"]


def test_bytearray_input_is_copied_not_aliased() -> None:
    data = bytearray(b"\x81\x02hi")
    protocol = ClientProtocol()
    protocol.receive_data(data)
    data[2:4] = b"XX"
    assert protocol.read().messages == ["hi"]


# --- fragments and control frames ----------------------------------------------------------------


def test_fragments_with_an_interleaved_ping_reassemble_and_pong_is_queued() -> None:
    data = b"\x01\x03Hel" + b"\x89\x04ping" + b"\x00\x02lo" + b"\x80\x06 world"
    received = read_all(data)
    assert received.messages == ["Hello world"]
    assert unmask_client_frame(received.to_send) == (0x8A, b"ping")


def test_fragmented_binary_message_reassembles_to_bytes() -> None:
    assert read_all(b"\x02\x02\x00\x01" + b"\x80\x02\x02\x03").messages == [b"\x00\x01\x02\x03"]


def test_fragment_split_across_reads_reassembles() -> None:
    protocol = ClientProtocol()
    protocol.receive_data(b"\x01\x03Hel")
    assert protocol.read() == Received([])
    protocol.receive_data(b"\x80\x02lo")
    assert protocol.read().messages == ["Hello"]


def test_each_ping_gets_a_pong_with_its_payload_in_order() -> None:
    received = read_all(b"\x89\x01a" + b"\x81\x01x" + b"\x89\x00" + b"\x89\x01b")
    assert received.messages == ["x"]
    pongs, rest = [], received.to_send
    while rest:
        size = 6 + (rest[1] & 0x7F)
        pongs.append(unmask_client_frame(rest[:size]))
        rest = rest[size:]
    assert pongs == [(0x8A, b"a"), (0x8A, b""), (0x8A, b"b")]


def test_unsolicited_pong_is_ignored() -> None:
    assert read_all(b"\x8a\x02hi" + b"\x81\x01x") == Received(["x"])


# --- close ---------------------------------------------------------------------------------------


def test_close_with_code_and_reason_is_reported_and_echoed() -> None:
    protocol = ClientProtocol()
    protocol.receive_data(b"\x81\x06before" + b"\x88\x05\x03\xe8bye" + b"\x81\x05after")
    received = protocol.read()
    assert received.messages == ["before"]
    assert received.close == Close(1000, "bye")
    assert unmask_client_frame(received.to_send) == (0x88, b"\x03\xe8")
    assert protocol.close_received == Close(1000, "bye")
    assert protocol.close_sent
    protocol.receive_data(b"\x81\x04more")
    assert protocol.read() == Received([])  # nothing after a close counts


def test_close_without_code_reports_1005_and_replies_empty() -> None:
    received = read_all(b"\x88\x00")
    assert received.close == Close(1005, "")
    assert unmask_client_frame(received.to_send) == (0x88, b"")


def test_close_reply_is_not_sent_twice_after_our_own_close() -> None:
    protocol = ClientProtocol()
    ours = protocol.encode_close(1000, "done")
    assert unmask_client_frame(ours) == (0x88, b"\x03\xe8done")
    assert protocol.encode_close() == b""
    protocol.receive_data(b"\x88\x02\x03\xe8")
    received = protocol.read()
    assert received.close == Close(1000)
    assert received.to_send == b""


def test_encode_close_cuts_long_reason_to_fit_a_control_frame() -> None:
    first, payload = unmask_client_frame(encode_close(1001, "é" * 100))
    assert first == 0x88
    assert len(payload) <= 125
    assert payload[2:].decode() == "é" * 61  # 122 bytes: a whole number of characters


def test_encode_close_without_code_is_empty() -> None:
    assert unmask_client_frame(encode_close(None)) == (0x88, b"")


@pytest.mark.parametrize("code", [999, 1005, 1006, 1015, 2000, 5000])
def test_encode_close_refuses_codes_that_may_not_be_sent(code: int) -> None:
    with pytest.raises(ValueError):
        encode_close(code)


# --- protocol errors -----------------------------------------------------------------------------

PROTOCOL_ERRORS = {
    "rsv1 set": (b"\xc1\x01a", 1002),
    "rsv3 on a ping": (b"\x99\x00", 1002),
    "masked server frame": (b"\x81\x82\x00\x00\x00\x00hi", 1002),
    "control frame over 125 bytes": (b"\x89\x7e\x00\x7e" + b"p" * 126, 1002),
    "fragmented ping": (b"\x09\x00", 1002),
    "fragmented close": (b"\x08\x02\x03\xe8", 1002),
    "unknown data opcode": (b"\x83\x00", 1002),
    "unknown control opcode": (b"\x8b\x00", 1002),
    "continuation without a start": (b"\x80\x01a", 1002),
    "new message inside a fragmented one": (b"\x01\x01a" + b"\x81\x01b", 1002),
    "64-bit length with the top bit set": (b"\x81\x7f\x80" + b"\x00" * 7, 1002),
    "close with a 1-byte payload": (b"\x88\x01\x03", 1002),
    "close with a reserved code": (b"\x88\x02\x03\xed", 1002),  # 1005 may not be sent
    "close with an out-of-range code": (b"\x88\x02\x01\x00", 1002),
    "invalid UTF-8 text": (b"\x81\x02\xc3\x28", 1007),
    "invalid UTF-8 across fragments": (b"\x01\x01\xc3" + b"\x80\x01\x28", 1007),
    "truncated UTF-8 at message end": (b"\x01\x01a" + b"\x80\x01\xe2", 1007),
    "invalid UTF-8 close reason": (b"\x88\x03\x03\xe8\xff", 1007),
}


@pytest.mark.parametrize("data, code", PROTOCOL_ERRORS.values(), ids=PROTOCOL_ERRORS.keys())
def test_protocol_error_raises_with_the_close_code_to_send(data: bytes, code: int) -> None:
    protocol = ClientProtocol()
    protocol.receive_data(data)
    with pytest.raises(ProtocolError) as caught:
        protocol.read()
    assert caught.value.code == code
    assert caught.value.reason == str(caught.value)


def test_frame_over_the_size_limit_fails_on_its_header_alone() -> None:
    protocol = ClientProtocol(max_message=1000)
    protocol.receive_data(b"\x82\x7e\x03\xe9")  # announces 1001 bytes; none has arrived
    with pytest.raises(ProtocolError) as caught:
        protocol.read()
    assert caught.value.code == 1009


def test_fragments_over_the_size_limit_fail_with_1009() -> None:
    protocol = ClientProtocol(max_message=1000)
    protocol.receive_data(server_frame(0x01, b"a" * 600) + server_frame(0x00, b"a" * 600))
    with pytest.raises(ProtocolError) as caught:
        protocol.read()
    assert caught.value.code == 1009


def test_message_at_the_size_limit_is_accepted() -> None:
    assert read_all(server_frame(0x82, b"z" * 1000), max_message=1000).messages == [b"z" * 1000]


def test_messages_before_an_error_are_returned_and_the_error_comes_next() -> None:
    protocol = ClientProtocol()
    protocol.receive_data(b"\x81\x02ok" + b"\x89\x00" + b"\xc1\x01a" + b"\x81\x05later")
    received = protocol.read()
    assert received.messages == ["ok"]
    assert unmask_client_frame(received.to_send) == (0x8A, b"")
    with pytest.raises(ProtocolError, match="reserved bits"):
        protocol.read()
    protocol.receive_data(b"\x81\x01x")
    with pytest.raises(ProtocolError):  # the connection stays failed
        protocol.read()


# --- writer and masking --------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 125, 126, 65_535, 65_536, 20_000, 100_001])
def test_encoded_text_unmasks_back_to_the_original(size: int) -> None:
    text = ("añ€" * size)[:size]
    first, payload = unmask_client_frame(encode_text(text))
    assert first == 0x81
    assert payload.decode() == text


def test_encoded_binary_ping_and_pong_unmask_back() -> None:
    assert unmask_client_frame(encode_binary(b"\x00\xff" * 100)) == (0x82, b"\x00\xff" * 100)
    assert unmask_client_frame(encode_ping(b"hb")) == (0x89, b"hb")
    assert unmask_client_frame(encode_pong(b"hb")) == (0x8A, b"hb")


def test_non_final_fragment_has_fin_clear() -> None:
    assert unmask_client_frame(encode_frame(0x1, b"part", fin=False)) == (0x01, b"part")


def test_control_payload_over_125_bytes_is_refused() -> None:
    with pytest.raises(ValueError):
        encode_ping(b"x" * 126)


def test_every_frame_gets_a_fresh_mask_key() -> None:
    keys = {encode_text("same")[2:6] for _ in range(20)}
    assert len(keys) == 20


@pytest.mark.parametrize("size", [1, 2, 7, 100, 4095, 4096, 4097, 50_001])
def test_mask_matches_the_per_byte_definition_and_is_its_own_inverse(size: int) -> None:
    rng = random.Random(size)
    payload, key = rng.randbytes(size), rng.randbytes(4)
    masked = mask(payload, key)
    assert masked == bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    assert mask(masked, key) == payload


def test_client_frames_are_understood_by_a_wsproto_server() -> None:
    server = Connection(ConnectionType.SERVER)
    server.receive_data(
        encode_text("hi") + encode_binary(b"\x01" * 70_000) + encode_ping(b"p") + encode_close(1000, "bye")
    )
    text, binary, ping, close = server.events()
    assert isinstance(text, TextMessage) and text.data == "hi"
    assert isinstance(binary, BytesMessage) and binary.data == b"\x01" * 70_000
    assert isinstance(ping, Ping) and ping.payload == b"p"
    assert isinstance(close, WsprotoClose) and (close.code, close.reason) == (1000, "bye")


# --- property-style: wsproto's server encodes, we decode -----------------------------------------


@pytest.mark.parametrize("seed", range(25))
def test_random_wsproto_server_frames_decode_identically_in_random_chunks(seed: int) -> None:
    rng = random.Random(seed)
    server = Connection(ConnectionType.SERVER)
    wire = b""
    expected: list[str | bytes] = []
    pings: list[bytes] = []
    for _ in range(rng.randrange(1, 40)):
        size = rng.choice([0, 1, 125, 126, 200, 65_535, 65_536, 70_000, rng.randrange(2000)])
        text = rng.random() < 0.6
        message: str | bytes = (
            "".join(rng.choice("ab€😀") for _ in range(size)) if text else rng.randbytes(size)
        )
        expected.append(message)
        parts = rng.randrange(1, 4)
        cuts = sorted(rng.randrange(len(message) + 1) for _ in range(parts - 1))
        for i, (lo, hi) in enumerate(zip([0, *cuts], [*cuts, len(message)], strict=True)):
            finished = i == parts - 1
            event = TextMessage(message[lo:hi], message_finished=finished) if isinstance(message, str) else (
                BytesMessage(message[lo:hi], message_finished=finished)
            )
            wire += server.send(event)
            if rng.random() < 0.3:  # control frames may come between fragments
                payload = rng.randbytes(rng.randrange(126))
                pings.append(payload)
                wire += server.send(Ping(payload))

    protocol = ClientProtocol()
    got: list[str | bytes] = []
    replies = b""
    pos = 0
    while pos < len(wire):
        step = rng.choice([1, 2, 7, 100, 4096, 65_536])
        protocol.receive_data(wire[pos : pos + step])
        pos += step
        received = protocol.read()
        got += received.messages
        replies += received.to_send
    assert got == expected

    server.receive_data(replies)  # our pongs, checked by wsproto's parser
    pongs = list(server.events())
    assert all(isinstance(p, Pong) for p in pongs)
    assert [bytes(p.payload) for p in pongs if isinstance(p, Pong)] == pings


# --- handshake -----------------------------------------------------------------------------------

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 §1.3's example


def response(accept: bytes = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n" + extra + b"\r\n"
    )


def test_accept_key_matches_the_rfc_example() -> None:
    assert accept_key(KEY) == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_request_is_an_http11_upgrade_get() -> None:
    request = ClientHandshake("example.com:9443", "/stream?streams=a", key=KEY).request()
    head, _, body = request.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"GET /stream?streams=a HTTP/1.1"
    headers = {k.lower(): v for k, v in (line.split(b": ", 1) for line in lines[1:])}
    assert headers[b"host"] == b"example.com:9443"
    assert headers[b"upgrade"] == b"websocket"
    assert headers[b"connection"] == b"Upgrade"
    assert headers[b"sec-websocket-key"] == KEY
    assert headers[b"sec-websocket-version"] == b"13"
    assert body == b""


def test_generated_key_is_16_random_bytes_in_base64() -> None:
    first, second = ClientHandshake("h").key, ClientHandshake("h").key
    assert len(base64.b64decode(first, validate=True)) == 16
    assert first != second


def test_101_with_the_right_accept_completes_with_no_trailing_bytes() -> None:
    assert ClientHandshake("h", key=KEY).receive_data(response()) == b""


def test_response_split_byte_by_byte_completes_on_its_last_byte() -> None:
    handshake, data = ClientHandshake("h", key=KEY), response()
    results = [handshake.receive_data(data[i : i + 1]) for i in range(len(data))]
    assert results[:-1] == [None] * (len(data) - 1)
    assert results[-1] == b""


def test_frames_right_after_the_101_are_handed_on() -> None:
    frames = b"\x81\x05hello\x89\x00"
    rest = ClientHandshake("h", key=KEY).receive_data(response() + frames)
    assert rest == frames


def test_connection_header_may_list_several_tokens() -> None:
    data = response().replace(b"Connection: Upgrade", b"Connection: keep-alive, upgrade")
    assert ClientHandshake("h", key=KEY).receive_data(data) == b""


def test_other_status_is_a_rejection_carrying_it() -> None:
    handshake = ClientHandshake("h", key=KEY)
    with pytest.raises(HandshakeRefused) as caught:
        handshake.receive_data(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy")
    assert caught.value.status == 503
    assert caught.value.header(b"content-length") == b"4"
    assert isinstance(caught.value, HandshakeError)


def test_wrong_accept_key_fails() -> None:
    wrong = base64.b64encode(hashlib.sha1(b"other" + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    with pytest.raises(HandshakeError, match="Accept"):
        ClientHandshake("h", key=KEY).receive_data(response(accept=wrong))


@pytest.mark.parametrize(
    "old, new",
    [
        (b"Upgrade: websocket\r\n", b""),
        (b"Upgrade: websocket", b"Upgrade: h2c"),
        (b"Connection: Upgrade", b"Connection: close"),
    ],
)
def test_101_without_upgrade_headers_fails(old: bytes, new: bytes) -> None:
    with pytest.raises(HandshakeError) as caught:
        ClientHandshake("h", key=KEY).receive_data(response().replace(old, new))
    assert not isinstance(caught.value, HandshakeRefused)


def test_101_enabling_an_unoffered_extension_fails() -> None:
    extension = b"Sec-WebSocket-Extensions: permessage-deflate\r\n"
    with pytest.raises(HandshakeError, match="extensions"):
        ClientHandshake("h", key=KEY).receive_data(response(extra=extension))


def test_end_of_stream_mid_response_fails() -> None:
    handshake = ClientHandshake("h", key=KEY)
    assert handshake.receive_data(response()[:20]) is None
    with pytest.raises(HandshakeError, match="closed"):
        handshake.receive_data(b"")


def test_garbage_response_fails() -> None:
    with pytest.raises(HandshakeError):
        ClientHandshake("h", key=KEY).receive_data(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
