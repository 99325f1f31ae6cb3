"""The sans-IO NATS protocol: literal server bytes in, events out; commands as literal bytes."""

from __future__ import annotations

import pytest

from feedd.errors import CredentialsError, NatsProtocolError
from feedd.nats import protocol
from feedd.nats.auth import decode_seed, encode_public, encode_seed
from feedd.nats.jetstream import BatchAcks, StreamSettings, encode_batch
from feedd.nats.protocol import Err, Info, Msg, Ok, Parser, ServerPing, ServerPong

SERVER_BYTES = (
    b'INFO {"server_id":"X","version":"2.15.1","max_payload":1048576,"headers":true}\r\n'
    b"PING\r\n"
    b"MSG feedd.binance.trade.BTCUSDT 1 5\r\nhello\r\n"
    b"MSG _INBOX.abc.1 2 reply.to 0\r\n\r\n"
    b"HMSG _INBOX.abc.2 2 30 32\r\nNATS/1.0\r\nNats-Msg-Id: a:1\r\n\r\nok\r\n"
    b"HMSG _INBOX.abc.3 2 $JS.ACK.S.C.1.5.1.0.0 16 16\r\nNATS/1.0 503\r\n\r\n\r\n"
    b"PONG\r\n+OK\r\n-ERR 'Authorization Violation'\r\n"
)
EXPECTED = [
    Info({"server_id": "X", "version": "2.15.1", "max_payload": 1048576, "headers": True}),
    ServerPing(),
    Msg(b"feedd.binance.trade.BTCUSDT", 1, None, b"", b"hello"),
    Msg(b"_INBOX.abc.1", 2, b"reply.to", b"", b""),
    Msg(b"_INBOX.abc.2", 2, None, b"NATS/1.0\r\nNats-Msg-Id: a:1\r\n\r\n", b"ok"),
    Msg(b"_INBOX.abc.3", 2, b"$JS.ACK.S.C.1.5.1.0.0", b"NATS/1.0 503\r\n\r\n", b""),
    ServerPong(),
    Ok(),
    Err("Authorization Violation"),
]


def test_every_server_message_is_parsed_from_one_read() -> None:
    parser = Parser()
    parser.receive_data(SERVER_BYTES)
    assert parser.events() == EXPECTED
    assert parser.events() == []


def test_messages_split_at_every_byte_come_out_whole_and_in_order() -> None:
    for cut in range(1, len(SERVER_BYTES)):
        parser = Parser()
        parser.receive_data(SERVER_BYTES[:cut])
        events = parser.events()
        parser.receive_data(SERVER_BYTES[cut:])
        assert events + parser.events() == EXPECTED, cut


def test_a_payload_holding_crlf_is_taken_by_its_size() -> None:
    parser = Parser()
    parser.receive_data(b"MSG s 1 4\r\na\r\nb\r\n")
    assert parser.events() == [Msg(b"s", 1, None, b"", b"a\r\nb")]


@pytest.mark.parametrize("data", [
    b"MSG s 1\r\n",
    b"MSG s x 3\r\nabc\r\n",
    b"MSG s 1 -3\r\nabc\r\n",
    b"HMSG s 1 9 3\r\nabc\r\n",
    b"BOGUS\r\n",
    b"INFO not json\r\n",
    b"INFO [1]\r\n",
    b"x" * (protocol.MAX_CONTROL_LINE + 1),
])
def test_what_is_not_the_protocol_is_a_protocol_error(data: bytes) -> None:
    parser = Parser()
    parser.receive_data(data)
    with pytest.raises(NatsProtocolError):
        parser.events()


def test_commands_are_the_documented_bytes() -> None:
    assert protocol.connect({"verbose": False}) == b'CONNECT {"verbose":false}\r\n'
    assert protocol.pub(b"a.b", b"hi") == b"PUB a.b 2\r\nhi\r\n"
    assert protocol.pub(b"a.b", b"hi", b"r.1") == b"PUB a.b r.1 2\r\nhi\r\n"
    headers = protocol.header_block({"Nats-Msg-Id": "x:1"})
    assert headers == b"NATS/1.0\r\nNats-Msg-Id: x:1\r\n\r\n"
    assert protocol.hpub(b"a.b", headers, b"hi", b"r") == b"HPUB a.b r 30 32\r\n" + headers + b"hi\r\n"
    assert protocol.sub(b"_INBOX.x.*", 3) == b"SUB _INBOX.x.* 3\r\n"
    assert protocol.unsub(3) == b"UNSUB 3\r\n"
    with pytest.raises(ValueError, match="cannot be sent"):
        protocol.header_block({"Nats-Msg-Id": "x\r\nEvil: 1"})


def test_a_publish_batch_is_one_hpub_per_message_with_the_batch_reply() -> None:
    batch = encode_batch([(b"feedd.b.trade.X", b"b:trade:X:1", b'{"a":1}\n'),
                          (b"feedd.b.trade.X", b"b:trade:X:22", b"{}\n")], b"_INBOX.q.7")
    first = protocol.hpub(b"feedd.b.trade.X", protocol.header_block({"Nats-Msg-Id": "b:trade:X:1"}),
                          b'{"a":1}\n', b"_INBOX.q.7")
    second = protocol.hpub(b"feedd.b.trade.X", protocol.header_block({"Nats-Msg-Id": "b:trade:X:22"}),
                           b"{}\n", b"_INBOX.q.7")
    assert batch == first + second


def test_header_blocks_parse_into_status_and_fields() -> None:
    parsed = protocol.parse_headers(b"NATS/1.0 100 FlowControl Request\r\nNats-Msg-Id: a:1\r\n\r\n")
    assert (parsed.status, parsed.description, dict(parsed.fields)) == (100, "FlowControl Request",
                                                                         {"Nats-Msg-Id": "a:1"})
    assert protocol.parse_headers(b"").status is None
    with pytest.raises(NatsProtocolError):
        protocol.parse_headers(b"HTTP/1.1 200\r\n\r\n")


def test_acks_are_counted_with_duplicates_and_errors_apart() -> None:
    acks = BatchAcks(4)
    acks.on_reply(Msg(b"r", 1, None, b"", b'{"stream":"FEEDD","seq":1}'))
    acks.on_reply(Msg(b"r", 1, None, b"", b'{"stream":"FEEDD","seq":1,"duplicate":true}'))
    acks.on_reply(Msg(b"r", 1, None, b"", b'{"error":{"code":503,"err_code":10077,"description":"full"}}'))
    assert not acks.done.is_set()
    acks.on_reply(Msg(b"r", 1, None, b"NATS/1.0 503\r\n\r\n", b""))
    assert acks.done.is_set()
    assert (acks.acked, acks.duplicates, acks.error_count) == (2, 1, 2)
    assert acks.errors == ["full (err_code 10077)", "no stream takes these subjects (no responders)"]


def test_an_existing_stream_is_compared_on_what_feedd_sets() -> None:
    settings = StreamSettings("FEEDD", ("feedd.>",), max_age=60.0, max_bytes=-1, duplicate_window=120.0)
    assert settings.differences(settings.api_config()) == []
    theirs = {**settings.api_config(), "subjects": ["other.>"], "duplicate_window": 30 * 10**9}
    assert settings.differences(theirs) == ["subjects ['other.>'] (want ['feedd.>'])",
                                            "duplicate_window 30 s (want 120 s)"]


def test_nkey_seeds_and_public_keys_round_trip_with_their_checksum() -> None:
    raw = bytes(range(32))
    user = 20 << 3
    seed = encode_seed(user, raw)
    assert seed.startswith("SU")
    assert decode_seed(seed) == (user, raw)
    assert encode_public(user, raw).startswith("U")
    broken = seed[:-3] + ("A" if seed[-3] != "A" else "B") + seed[-2:]
    with pytest.raises(CredentialsError):
        decode_seed(broken)
