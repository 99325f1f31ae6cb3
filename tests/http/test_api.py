"""The HTTP API end to end: a real HTTP client against a daemon fed by the Binance simulator."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
import trio
import trio.testing
from harness import (
    API,
    TIMEOUT,
    GatedRest,
    Subscriber,
    running,
    simulator,
    subscribe_body,
    temporary_workdir,
    write_config,
)

from feedd.config import load_config
from feedd.model import MarketData


@pytest.fixture
def workdir() -> object:
    with temporary_workdir() as path:
        yield path


def consecutive(trades: list[MarketData]) -> bool:
    ids = [int(t.trade_id or 0) for t in trades]
    return ids == list(range(ids[0], ids[0] + len(ids)))


async def test_status_names_every_venue_with_the_documented_fields(workdir: Path) -> None:
    async with simulator() as spot, running(write_config(workdir, spot)) as (daemon, http):
        with trio.fail_after(TIMEOUT):
            client = await Subscriber.connect(daemon.config.unix.path)
            await client.record()  # a record delivered: the venue is connected and fresh
            answer = await http.get(f"{API}/status")
    assert answer.status_code == 200
    status = answer.json()
    assert status["state"] == "ok"
    assert status["http"]["listen"] == daemon.http_address
    binance = status["exchanges"]["binance"]
    assert binance["state"] == "connected"
    for key in ("messages", "records", "reconnects", "consecutive_failures"):
        assert type(binance[key]) is int, key
    assert binance["messages"] >= 1 and binance["records"] >= 1
    assert binance["rejected"] == {} and binance["last_error"] is None
    assert isinstance(binance["seconds_since_last_message"], float)
    [conn] = binance["connections"]
    assert conn["state"] == "connected" and conn["streams"] == 2
    assert binance["subscriptions"] == [{"symbol": "BTCUSDT", "channels": ["trades", "ticker"],
                                         "state": "active"}]
    [subscriber] = status["subscribers"]
    assert subscriber["kind"] == "unix" and subscriber["delivered"] >= 1 and subscriber["dropped"] == 0


async def test_a_live_subscribe_adds_a_stream_on_the_same_connection_and_the_others_never_gap(
    workdir: Path,
) -> None:
    async with simulator() as spot, running(write_config(workdir, spot)) as (daemon, http):
        with trio.fail_after(TIMEOUT):
            client = await Subscriber.connect(daemon.config.unix.path, b'{"kind": ["trade"]}\n')
            before = await client.until(lambda r: r.symbol == "BTCUSDT")
            answer = await http.post(f"{API}/subscribe", content=subscribe_body("ethusdt"))
            assert answer.status_code == 200, answer.text
            # the exchange acknowledged before the answer: the stream is on the wire
            assert {"ethusdt@trade", "ethusdt@ticker"} <= spot.connections[0].streams
            during = await client.until(lambda r: r.symbol == "ETHUSDT")
            after = await client.until(lambda r: r.symbol == "BTCUSDT")
            listing = (await http.get(f"{API}/subscriptions")).json()
    assert answer.json() == {"exchange": "binance", "symbol": "ETHUSDT", "channels": ["trades", "ticker"],
                             "added": ["trades", "ticker"], "persisted": True}
    btc = [r for r in before + during + after if r.symbol == "BTCUSDT"]
    assert consecutive(btc), [r.trade_id for r in btc]
    assert spot.connections_accepted == 1 and spot.frames_dropped == 0
    assert listing["subscriptions"] == [
        {"exchange": "binance", "symbol": "BTCUSDT", "channels": ["trades", "ticker"], "state": "active"},
        {"exchange": "binance", "symbol": "ETHUSDT", "channels": ["trades", "ticker"], "state": "active"},
    ]


async def test_unsubscribe_stops_the_stream_live_and_a_second_one_is_404(workdir: Path) -> None:
    async with simulator() as spot:
        config = write_config(workdir, spot, symbols=("BTCUSDT", "ETHUSDT"))
        async with running(config) as (daemon, http):
            with trio.fail_after(TIMEOUT):
                client = await Subscriber.connect(daemon.config.unix.path, b'{"kind": ["trade"]}\n')
                await client.until(lambda r: r.symbol == "ETHUSDT")
                answer = await http.delete(f"{API}/unsubscribe?exchange=binance&symbol=ETHUSDT")
                answered_at = datetime.now(UTC)
                assert answer.status_code == 200, answer.text
                assert not any(s.startswith("ethusdt") for s in spot.connections[0].streams)
                # what the daemon read after the answer is BTCUSDT only
                later = await client.until(lambda r: r.received_at > answered_at and r.symbol == "BTCUSDT")
                later += [await client.record() for _ in range(5)]
                again = await http.delete(f"{API}/unsubscribe", params={"exchange": "binance",
                                                                        "symbol": "ETHUSDT"})
    assert answer.json()["removed"] == ["trades", "ticker"]
    assert not [r for r in later if r.symbol == "ETHUSDT" and r.received_at > answered_at]
    assert again.status_code == 404
    assert "ETHUSDT is not subscribed" in again.json()["error"]
    assert spot.connections_accepted == 1


async def test_subscribing_what_is_already_subscribed_changes_nothing(workdir: Path) -> None:
    async with simulator() as spot, running(write_config(workdir, spot)) as (_, http):
        with trio.fail_after(TIMEOUT):
            await spot.wait_subscribed({"btcusdt@trade", "btcusdt@ticker"})
            first = await http.post(f"{API}/subscribe", content=subscribe_body("BTCUSDT", ["trades"]))
            requests = spot.requests_received
            second = await http.post(f"{API}/subscribe", content=subscribe_body("BTCUSDT", ["trades"]))
    assert first.status_code == second.status_code == 200
    assert second.json()["added"] == [] and second.json()["channels"] == ["trades", "ticker"]
    assert spot.requests_received == requests  # nothing sent to the exchange


BAD_REQUESTS = [
    # (method, path, body, status, words in the error)
    ("POST", "/subscribe", b'{"exchange": "kraken", "symbol": "BTCUSDT"}', 404, "unknown venue 'kraken'"),
    ("POST", "/subscribe", b'{"exchange": "binance-usdm", "symbol": "BTCUSDT"}', 404, "not configured"),
    ("POST", "/subscribe", b'{"exchange": "binance", "symbol": "NOPEUSDT"}', 404,
     "unknown symbol 'NOPEUSDT'"),
    ("POST", "/subscribe", b'{"exchange": "binance", "symbol": "BTC USDT"}', 400, "not a symbol"),
    ("POST", "/subscribe", b'{"exchange": "binance", "symbol": ""}', 400, "not a symbol"),
    ("POST", "/subscribe", b'{"exchange": "binance", "symbol": "btc@trade"}', 400, "not a symbol"),
    ("POST", "/subscribe", b'{"exchange": "binance"', 400, "not JSON"),
    ("POST", "/subscribe", b"\xff\xfe", 400, "not JSON"),
    ("POST", "/subscribe", b"", 400, "missing JSON body"),
    ("POST", "/subscribe", b'["binance", "BTCUSDT"]', 400, "must be a JSON object"),
    ("POST", "/subscribe", b'{"symbol": "BTCUSDT"}', 400, "missing field 'exchange'"),
    ("POST", "/subscribe", b'{"exchange": "binance"}', 400, "missing field 'symbol'"),
    ("POST", "/subscribe", b'{"exchange": 1, "symbol": "BTCUSDT"}', 400, "'exchange' must be a string"),
    ("POST", "/subscribe", b'{"exchange": "binance", "symbol": null}', 400, "'symbol' must be a string"),
    ("POST", "/subscribe", b'{"exchange": "binance", "symbol": "ETHUSDT", "channels": "trades"}', 400,
     "'channels' must be an array"),
    ("POST", "/subscribe", b'{"exchange": "binance", "symbol": "ETHUSDT", "channels": []}', 400,
     "non-empty list"),
    ("POST", "/subscribe", b'{"exchange": "binance", "symbol": "ETHUSDT", "channels": ["book"]}', 400,
     "unknown channel 'book'"),
    ("POST", "/subscribe", b'{"exchange": "binance", "symbol": "ETHUSDT", "side": "buy"}', 400,
     "unknown field(s) 'side'"),
    ("POST", "/subscribe", b'{"exchange": "' + b"x" * 20_000 + b'"}', 413, "larger than"),
    ("DELETE", "/unsubscribe?exchange=binance", b"", 400, "missing 'symbol'"),
    ("DELETE", "/unsubscribe?exchange=binance&symbol=BTCUSDT&limit=3", b"", 400, "unknown query parameter"),
    ("DELETE", "/unsubscribe?exchange=binance&symbol=ETHUSDT", b"", 404, "not subscribed"),
    ("DELETE", "/unsubscribe?exchange=binance&symbol=BTCUSDT", b'{"exchange": "binance"}', 400, "not both"),
    ("GET", "/subscribe", b"", 405, "GET is not allowed"),
    ("POST", "/status", b"", 405, "POST is not allowed"),
    ("PUT", "/unsubscribe", b"", 405, "allowed: DELETE"),
    ("GET", "/nothing-here", b"", 404, "no such endpoint"),
]


async def test_bad_requests_get_a_4xx_naming_the_problem_and_the_feed_goes_on(workdir: Path) -> None:
    async with simulator() as spot, running(write_config(workdir, spot)) as (daemon, http):
        with trio.fail_after(TIMEOUT):
            await daemon.initialize()
            answers = [
                (case, await http.request(case[0], API + case[1], content=case[2]))
                for case in BAD_REQUESTS
            ]
            status = (await http.get(f"{API}/status")).json()
            client = await Subscriber.connect(daemon.config.unix.path)
            after = datetime.now(UTC)
            await client.until(lambda r: r.received_at > after)
    for (method, path, _, expected, words), answer in answers:
        assert answer.status_code == expected, (method, path, answer.text)
        assert words in answer.json()["error"], (method, path, answer.text)
        assert answer.headers["content-type"] == "application/json"
    assert status["exchanges"]["binance"]["subscriptions"] == [
        {"symbol": "BTCUSDT", "channels": ["trades", "ticker"], "state": "active"}
    ]
    assert status["exchanges"]["binance"]["subscription_errors"] == {}  # a client's typo is not
    assert status["exchanges"]["binance"]["last_error"] is None         # the venue's problem
    assert spot.connections_accepted == 1


async def test_a_subscribe_during_the_instrument_list_fetch_waits_for_it_then_checks_the_symbol(
    workdir: Path,
) -> None:
    async with simulator() as spot, trio.open_nursery() as nursery:
        gate = GatedRest(spot.exchange_info())
        await nursery.start(gate.serve)
        config = write_config(workdir, spot, rest_url=gate.url)
        async with running(config) as (_, http):
            answers: dict[str, int] = {}

            async def subscribe(symbol: str) -> None:
                answer = await http.post(f"{API}/subscribe", content=subscribe_body(symbol))
                answers[symbol] = answer.status_code

            with trio.fail_after(TIMEOUT):
                await gate.requested.wait()
                async with trio.open_nursery() as requests:
                    requests.start_soon(subscribe, "NOPEUSDT")
                    requests.start_soon(subscribe, "ETHUSDT")
                    await trio.testing.wait_all_tasks_blocked()
                    assert answers == {}  # both wait for the list
                    gate.release.set()
        nursery.cancel_scope.cancel()
    assert answers == {"NOPEUSDT": 404, "ETHUSDT": 200}


async def test_a_subscribe_the_exchange_never_answers_is_a_504_naming_the_pending_streams(
    workdir: Path,
) -> None:
    async with simulator() as spot, running(write_config(workdir, spot), ack_timeout=0.15) as (daemon, http):
        with trio.fail_after(TIMEOUT):
            await spot.wait_subscribed({"btcusdt@trade"})
            await daemon.initialize()
            spot.set_silent(True)  # it still applies requests, but answers nothing
            answer = await http.post(f"{API}/subscribe", content=subscribe_body("ETHUSDT", ["trades"]))
            listing = (await http.get(f"{API}/subscriptions")).json()["subscriptions"]
    assert answer.status_code == 504
    assert "no answer from the exchange" in answer.json()["error"]
    assert "ethusdt@trade" in answer.json()["error"]
    assert {"exchange": "binance", "symbol": "ETHUSDT", "channels": ["trades"], "state": "pending"} in listing


async def test_a_subscription_the_exchange_refuses_is_a_502_with_its_error_and_rolled_back(
    workdir: Path,
) -> None:
    async with simulator() as spot:
        # unchecked symbols go to the exchange, which refuses a stream name it cannot parse
        config = write_config(workdir, spot, exchange="check_symbols = false")
        async with running(config) as (_, http):
            with trio.fail_after(TIMEOUT):
                answer = await http.post(f"{API}/subscribe", content=subscribe_body("BTC-USD", ["trades"]))
                listing = (await http.get(f"{API}/subscriptions")).json()["subscriptions"]
    assert answer.status_code == 502
    assert "btc-usd@trade: code 2: Invalid request: invalid stream" in answer.json()["error"]
    assert [s["symbol"] for s in listing] == ["BTCUSDT"]


async def test_the_mutating_endpoints_demand_the_token_and_the_reads_do_not(workdir: Path) -> None:
    async with simulator() as spot:
        config = write_config(workdir, spot, http='token = "s3cret-token"')
        async with running(config) as (daemon, http):
            with trio.fail_after(TIMEOUT):
                await daemon.initialize()
                body = subscribe_body("ETHUSDT")
                missing = await http.post(f"{API}/subscribe", content=body)
                wrong = await http.post(f"{API}/subscribe", content=body,
                                        headers={"authorization": "Bearer not-it"})
                basic = await http.delete(f"{API}/unsubscribe?exchange=binance&symbol=BTCUSDT",
                                          headers={"authorization": "Basic czNjcmV0LXRva2Vu"})
                reads = [await http.get(path) for path in (f"{API}/status", f"{API}/subscriptions",
                                                           "/healthz", "/metrics")]
                right = await http.post(f"{API}/subscribe", content=body,
                                        headers={"authorization": "Bearer s3cret-token"})
    for refused in (missing, wrong, basic):
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Bearer")
    assert "Authorization: Bearer" in missing.json()["error"]
    assert wrong.json()["error"] == "wrong API token"
    assert [r.status_code for r in reads][:2] == [200, 200] and reads[3].status_code == 200
    assert right.status_code == 200
    assert daemon.venues["binance"].channels_of("BTCUSDT") == ["trades", "ticker"]


async def test_the_token_can_come_from_a_file(workdir: Path) -> None:
    (workdir / "token").write_text("from-a-file\n", encoding="utf-8")
    async with simulator() as spot:
        config = write_config(workdir, spot, http='token_file = "token"')
        assert config.http.token == "from-a-file"
        async with running(config) as (daemon, http):
            with trio.fail_after(TIMEOUT):
                await daemon.initialize()
                refused = await http.delete(f"{API}/unsubscribe?exchange=binance&symbol=BTCUSDT")
                allowed = await http.delete(f"{API}/unsubscribe?exchange=binance&symbol=BTCUSDT",
                                            headers={"authorization": "Bearer from-a-file"})
    assert (refused.status_code, allowed.status_code) == (401, 200)


async def test_head_answers_like_get_without_a_body(workdir: Path) -> None:
    async with simulator() as spot, running(write_config(workdir, spot)) as (_, http):
        with trio.fail_after(TIMEOUT):
            # answered once acknowledged: the listing stays the same from here on
            await http.post(f"{API}/subscribe", content=subscribe_body("BTCUSDT"))
            head = await http.head(f"{API}/subscriptions")
            get = await http.get(f"{API}/subscriptions")
    assert head.status_code == get.status_code == 200
    assert head.content == b"" and int(head.headers["content-length"]) == len(get.content)
    assert orjson.loads(get.content)["subscriptions"][0]["symbol"] == "BTCUSDT"


async def test_a_request_in_flight_when_the_daemon_stops_still_gets_its_answer(workdir: Path) -> None:
    async with simulator() as spot, running(write_config(workdir, spot), ack_timeout=0.3) as (daemon, http):
        with trio.fail_after(TIMEOUT):
            await spot.wait_subscribed({"btcusdt@trade"})
            await daemon.initialize()
            spot.set_silent(True)
            answers = []

            async def subscribe() -> None:
                answers.append(await http.post(f"{API}/subscribe", content=subscribe_body("ETHUSDT")))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(subscribe)
                await spot.wait_subscribed({"ethusdt@trade"})  # the request is with the exchange
                daemon.stop()  # graceful: the answer still comes (here: no acknowledgement in time)
    assert [a.status_code for a in answers] == [504]


async def test_a_live_subscribe_on_a_full_connection_opens_another_without_touching_it(
    workdir: Path,
) -> None:
    async with simulator(futures=True) as futures:
        symbols = [f"S{i}USDT" for i in range(100)]  # 200 market-route streams: USD-M's limit
        quoted = ", ".join(f'"{s}"' for s in symbols)
        (workdir / "config.toml").write_text(f"""
[http]
listen = "127.0.0.1:0"
[unix]
path = "feedd.sock"
[exchanges.binance-usdm]
symbols = [{quoted}]
channels = ["trades", "ticker"]
check_symbols = false
url = "{futures.ws_url}"
rest_url = "{futures.rest_url}"
""", encoding="utf-8")
        async with running(load_config(workdir / "config.toml", environ={})) as (daemon, http):
            with trio.fail_after(TIMEOUT):
                full = await futures.wait_subscribed({f"{s.lower()}@aggTrade" for s in symbols})
                body = subscribe_body("NEWUSDT", ["trades"], exchange="binance-usdm")
                answer = await http.post(f"{API}/subscribe", content=body)
                market = [c for c in futures.connections if c.route == "market"]
            status = daemon.statuses["binance-usdm"]
    assert answer.status_code == 200, answer.text
    assert len(market) == 2 and full in market
    assert len(full.streams) == 200 and "newusdt@aggTrade" not in full.streams
    assert [c.streams for c in market if c is not full] == [frozenset({"newusdt@aggTrade"})]
    assert futures.connections_accepted == 3  # market, public, and the new market shard
    assert status.reconnects == 0


LONG = "X" * 5000

LONG_INPUT = [
    # (method, path, body, status)
    ("POST", "/subscribe", b'{"exchange": "binance", "symbol": "' + LONG.encode() + b'"}', 400),
    ("POST", "/subscribe", b'{"exchange": "' + LONG.encode() + b'", "symbol": "BTCUSDT"}', 404),
    ("POST", "/subscribe", b'{"exchange": "binance", "symbol": "ETHUSDT", "channels": ["'
     + LONG.encode() + b'"]}', 400),
    ("POST", "/subscribe", b'{"exchange": "binance", "symbol": "ETHUSDT", "' + LONG.encode() + b'": 1}', 400),
    ("DELETE", "/unsubscribe?exchange=binance&symbol=BTCUSDT&" + LONG + "=1", b"", 400),
    ("GET", "/" + LONG, b"", 404),
]


async def test_errors_quote_at_most_sixty_characters_of_what_the_client_sent(workdir: Path) -> None:
    async with simulator() as spot, running(write_config(workdir, spot)) as (daemon, http):
        with trio.fail_after(TIMEOUT):
            await daemon.initialize()
            answers = [
                (case, await http.request(case[0], API + case[1], content=case[2])) for case in LONG_INPUT
            ]
    for (method, path, _, expected), answer in answers:
        assert answer.status_code == expected, (method, path[:80], answer.text[:200])
        error = answer.json()["error"]
        assert "XXX" in error, error  # the input is quoted...
        assert error.count("X") <= 60, (method, path[:80], len(error))  # ...but not at full length


async def test_a_subscribe_overtaken_by_an_unsubscribe_of_the_same_symbol_is_a_409_not_a_refusal(
    workdir: Path,
) -> None:
    async with simulator() as spot, running(write_config(workdir, spot)) as (daemon, http):
        with trio.fail_after(TIMEOUT):
            await spot.wait_subscribed({"btcusdt@trade"})
            await daemon.initialize()
            spot.set_silent(True)  # the subscribe reaches the exchange, its acknowledgement does not
            answers = []

            async def subscribe() -> None:
                answers.append(await http.post(f"{API}/subscribe", content=subscribe_body("ETHUSDT")))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(subscribe)
                await spot.wait_subscribed({"ethusdt@trade", "ethusdt@ticker"})
                spot.set_silent(False)
                removed = await http.delete(f"{API}/unsubscribe?exchange=binance&symbol=ETHUSDT")
            status = (await http.get(f"{API}/status")).json()["exchanges"]["binance"]
    assert removed.status_code == 200, removed.text
    [answer] = answers
    assert answer.status_code == 409, answer.text
    assert answer.json()["error"] == (
        "binance: ETHUSDT was unsubscribed while the subscribe was pending; nothing was refused"
    )
    assert status["subscriptions"] == [{"symbol": "BTCUSDT", "channels": ["trades", "ticker"],
                                        "state": "active"}]
    assert status["subscription_errors"] == {} and status["last_error"] is None


MALFORMED_HTTP = [
    (b"GARBAGE\r\n\r\n", 400),
    (b"POST /api/v1/websocket/subscribe HTTP/1.1\r\nhost: x\r\ncontent-length: abc\r\n\r\n", 400),
    (b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 100_000 + b"\r\n\r\n", 431),
]


async def raw_exchange(address: str, request: bytes) -> bytes:
    host, port = address.rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(request)
        answer = b""
        while data := await stream.receive_some(65536):  # the server closes after answering
            answer += data
    return answer


async def test_http_that_never_reaches_the_app_gets_hypercorns_bare_4xx_and_the_api_goes_on(
    workdir: Path,
) -> None:
    async with simulator() as spot, running(write_config(workdir, spot)) as (daemon, http):
        with trio.fail_after(TIMEOUT):
            address = daemon.http_address or ""
            answers = [await raw_exchange(address, request) for request, _ in MALFORMED_HTTP]
            after = await http.get(f"{API}/subscriptions")
    for (_, expected), answer in zip(MALFORMED_HTTP, answers, strict=True):
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(f"HTTP/1.1 {expected} ".encode()), head
        assert b"content-length: 0" in head.lower() and body == b""  # no JSON error body
    assert after.status_code == 200
