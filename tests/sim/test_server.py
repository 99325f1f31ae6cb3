"""The simulator server serves any pure protocol: replies before data, idle cuts, the flood seam.

A toy venue stands in for an exchange: ``sub <channel>`` is acked with ``ok <channel>`` and
starts the channel, whose first frame (a snapshot) the server sends on start; ``ping`` is an
application-level ping answered ``pong``.
"""

from __future__ import annotations

import random
import ssl
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import partial

import orjson
import pytest
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, WebSocketConnection, open_websocket_url

from feedd.errors import TransportError
from feedd.sim.faults import Fault, FaultSchedule
from feedd.sim.protocol import Accept, Answer, Liveness, Reject, SimConnection
from feedd.sim.server import SimServer
from feedd.sim.session import FLOOD_ROUND
from feedd.sim.switches import INVALID_FRAME
from feedd.wire.transport import TRANSPORTS, open_native
from feedd.wire.upgrade import HandshakeRefused


class ToyProtocol:
    default_path = "/toy"
    malformed_frame = "{"

    def __init__(self, liveness: Liveness) -> None:
        self.liveness = liveness
        self.refused: frozenset[str] = frozenset()
        self.swallow_subscribes = False

    def open(self, path: str, query: str) -> Accept[SimConnection] | Reject:
        if path != self.default_path:
            return Reject(404, {"error": path})
        return Accept(SimConnection(path))

    def receive(self, conn: SimConnection, text: str) -> Answer:
        if text == "ping":
            return Answer(frames=("pong",), ping=True)
        verb, _, channel = text.partition(" ")
        conn.topics[channel] = None
        if verb == "sub":
            return Answer(frames=(f"ok {channel}",), start=(channel,))
        del conn.topics[channel]
        return Answer(frames=(f"bye {channel}",), stop=(channel,))


NO_RULES = Liveness()


class ToySimulator(SimServer[SimConnection]):
    def __init__(self, liveness: Liveness = NO_RULES, **options: object) -> None:
        super().__init__(ToyProtocol(liveness), **options)  # type: ignore[arg-type]

    def _on_start(self, conn: SimConnection, channel: str) -> None:
        conn.offer(f"snapshot {channel}")

    def _heartbeat(self, channel: str) -> bool:
        return channel == "beat"

    def _floodable(self, channel: str) -> bool:
        return True

    def _flood_payloads(self, conn: SimConnection, channels: Sequence[str], per_channel: int) -> list[bytes]:
        return [f"{c} {i}".encode() for c in channels for i in range(per_channel)]


async def start(nursery: trio.Nursery, **kwargs: object) -> ToySimulator:
    sim = ToySimulator(**kwargs)  # type: ignore[arg-type]
    await nursery.start(sim.serve)
    return sim


async def test_the_ack_goes_out_before_the_started_channel_and_its_data(nursery: trio.Nursery) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as ws:
        await ws.send_message("sub a")
        assert await ws.get_message() == "ok a"
        assert await ws.get_message() == "snapshot a"
        sim.publish("a", "update a")
        sim.publish("b", "not subscribed")
        assert await ws.get_message() == "update a"
        await ws.send_message("unsub a")
        assert await ws.get_message() == "bye a"
        assert not sim.has_subscribers("a")


async def test_idle_connection_is_cut_without_a_close_frame(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    sim = await start(nursery, liveness=Liveness(idle_timeout=60.0))
    async with open_websocket_url(sim.ws_url) as ws:
        opened = trio.current_time()
        with pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
    assert closed.value.reason.code == 1006
    assert trio.current_time() - opened == pytest.approx(60.0, abs=0.1)
    assert sim.idle_closes == 1


async def test_pings_and_data_frames_push_the_idle_cut_back(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    sim = await start(nursery, liveness=Liveness(idle_timeout=60.0))
    async with open_websocket_url(sim.ws_url) as ws:
        for _ in range(5):
            await trio.sleep(50)
            await ws.send_message("ping")
            assert await ws.get_message() == "pong"
        await ws.send_message("sub a")
        assert await ws.get_message() == "ok a"
        assert await ws.get_message() == "snapshot a"
        for _ in range(5):
            await trio.sleep(50)
            sim.publish("a", "update a")
            assert await ws.get_message() == "update a"
    assert sim.pings_received == 5
    assert sim.idle_closes == 0


async def test_flood_writes_one_frame_per_write_by_default(nursery: trio.Nursery) -> None:
    sim = await start(nursery, flood=True)
    async with open_websocket_url(sim.ws_url) as ws:
        await ws.send_message("sub a")
        assert await ws.get_message() == "ok a"
        received = [await ws.get_message() for _ in range(600)]
    assert received == [f"a {i % FLOOD_ROUND}" for i in range(600)]
    assert sim.flood_frames_sent == sim.flood_writes >= 600


async def test_flood_writes_frames_per_write_frames_at_a_time(nursery: trio.Nursery) -> None:
    sim = await start(nursery, flood=True, frames_per_write=7)
    async with open_websocket_url(sim.ws_url) as ws:
        await ws.send_message("sub a")
        assert await ws.get_message() == "ok a"
        received = [await ws.get_message() for _ in range(600)]
    assert received == [f"a {i % FLOOD_ROUND}" for i in range(600)]
    # a round of FLOOD_ROUND frames is cut into writes of 7 (the last one shorter)
    rounds = sim.flood_frames_sent // FLOOD_ROUND
    assert sim.flood_frames_sent == rounds * FLOOD_ROUND
    assert sim.flood_writes == rounds * -(-FLOOD_ROUND // 7)


def test_frames_per_write_must_be_positive() -> None:
    with pytest.raises(ValueError, match="frames_per_write"):
        ToySimulator(frames_per_write=0)


async def test_the_close_code_a_client_ends_with_is_counted(nursery: trio.Nursery) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as ws:
        await ws.send_message("sub a")
        assert await ws.get_message() == "ok a"
    await sim.wait_until(lambda: sum(sim.client_close_codes.values()) == 1)
    assert sim.client_close_codes == {1000: 1}


# ---- handshake faults ---------------------------------------------------------------------------


async def rejection(url: str) -> ConnectionRejected:
    with pytest.raises(ConnectionRejected) as rejected:
        async with open_websocket_url(url):
            pass
    return rejected.value


async def test_a_refusal_carries_its_status_and_retry_after_in_seconds(nursery: trio.Nursery) -> None:
    sim = await start(nursery)
    sim.refuse_connections(2, status=429, retry_after=29.2)
    for _ in range(2):
        refused = await rejection(sim.ws_url)
        assert refused.status_code == 429
        assert (b"retry-after", b"30") in refused.headers  # delta-seconds are whole: rounded up
        assert orjson.loads(refused.body or b"") == {"error": "Too Many Requests"}
    async with open_websocket_url(sim.ws_url):
        pass
    assert sim.refusals == {429: 2} and sim.connections_accepted == 1
    assert len(sim.handshake_times) == sim.connection_attempts == 3


async def test_a_refusal_may_name_an_http_date_and_a_ban_is_a_418(nursery: trio.Nursery) -> None:
    sim = await start(nursery)
    until = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
    sim.refuse_connections(1, status=418, retry_after=until)
    refused = await rejection(sim.ws_url)
    assert refused.status_code == 418
    assert dict(refused.headers)[b"retry-after"] == b"Thu, 03 Dec 2026 12:00:00 GMT"
    sim.refuse_connections(1, status=502)
    refused = await rejection(sim.ws_url)
    assert refused.status_code == 502 and b"retry-after" not in dict(refused.headers)
    assert sim.refusals == {418: 1, 502: 1}


def test_a_refusal_is_a_4xx_or_5xx() -> None:
    with pytest.raises(ValueError, match="not 302"):
        ToySimulator().refuse_connections(1, status=302)


async def test_feedd_reads_the_refusal_as_a_handshake_refused_with_its_wait(nursery: trio.Nursery) -> None:
    sim = await start(nursery)
    for open_ in TRANSPORTS.values():
        sim.refuse_connections(1, status=429, retry_after=45)
        with pytest.raises(HandshakeRefused) as refused:
            async with open_(sim.ws_url, connect_timeout=5):
                pass
        assert (refused.value.status, refused.value.retry_after) == (429, 45.0)



async def test_tls_fails_for_the_next_connections_then_works(
    nursery: trio.Nursery, tls: ssl.SSLContext
) -> None:
    sim = await start(nursery, ssl_context=tls)
    sim.fail_tls(2)
    for _ in range(2):
        with pytest.raises(TransportError, match="WRONG_VERSION_NUMBER"):
            async with open_native(sim.ws_url, connect_timeout=5):
                pass
    async with open_native(sim.ws_url, connect_timeout=5) as transport:
        await transport.send("sub a")
        received: list[object] = []
        while len(received) < 2:
            received += await transport.receive_batch()
    assert received == ["ok a", "snapshot a"]
    assert sim.tls_failures == 2 and sim.connections_accepted == 1
    assert len(sim.handshake_times) == 3


async def test_tls_faults_need_a_simulator_serving_wss(nursery: trio.Nursery) -> None:
    sim = await start(nursery)
    with pytest.raises(RuntimeError, match="wss"):
        sim.fail_tls(1)


# ---- faults -------------------------------------------------------------------------------


async def subscribed(ws: WebSocketConnection, *channels: str) -> None:
    for channel in channels:
        await ws.send_message(f"sub {channel}")
        assert await ws.get_message() == f"ok {channel}"
        assert await ws.get_message() == f"snapshot {channel}"


async def test_a_half_open_connection_answers_nothing_then_ends_without_a_close_frame(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as ws:
        await subscribed(ws, "a")
        sim.half_open(30.0)
        opened = trio.current_time()
        sim.publish("a", "update a")
        await ws.send_message("ping")
        with trio.move_on_after(10) as no_pong:
            await ws.ping(b"are you there")
        assert no_pong.cancelled_caught
        with pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
    assert closed.value.reason.code == 1006
    assert trio.current_time() - opened == pytest.approx(30.0, abs=0.1)
    assert sim.pings_received == 0  # the request was never read


async def test_a_data_stall_keeps_heartbeats_and_replies_flowing(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as ws:
        await subscribed(ws, "a", "beat")
        sim.stall_data(True)
        sim.publish("a", "update a")
        sim.publish("beat", "beat 1")
        assert await ws.get_message() == "beat 1"
        await ws.send_message("ping")
        assert await ws.get_message() == "pong"
        sim.stall_data(False)
        sim.publish("a", "update a")
        assert await ws.get_message() == "update a"


async def test_a_trickled_frame_arrives_whole_after_a_byte_per_interval(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as ws:
        await subscribed(ws, "a")
        sim.trickle(1.0)
        started = trio.current_time()
        sim.publish("a", "update a")  # 2 header bytes + 8: the last byte leaves 9 s after the first
        assert await ws.get_message() == "update a"
        assert trio.current_time() - started == pytest.approx(9.0, abs=0.1)
        sim.trickle(None)
        sim.publish("a", "update b")
        assert await ws.get_message() == "update b"
        assert trio.current_time() - started == pytest.approx(9.0, abs=0.1)


def test_trickling_needs_a_positive_interval() -> None:
    with pytest.raises(ValueError, match="byte_interval"):
        ToySimulator().trickle(0.0)


async def test_an_invalid_frame_is_sent_between_whole_frames(nursery: trio.Nursery) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as ws:
        await subscribed(ws, "a")
        sim.send_invalid()
        sim.publish("a", "update a")
        assert await ws.get_message() == INVALID_FRAME
        assert await ws.get_message() == "update a"


async def test_an_oversized_frame_makes_a_client_with_a_smaller_limit_close_with_1009(
    nursery: trio.Nursery,
) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url, max_message_size=1000) as ws:
        await subscribed(ws, "a")
        sim.send_oversized(1001)
        with pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
    assert closed.value.reason.code == 1009


async def test_a_schedule_applies_faults_in_time_order_and_undoes_lasting_ones(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    sim = await start(nursery)
    applied: list[tuple[float, str]] = []
    schedule = FaultSchedule([Fault(4.0, "malformed"), Fault(1.0, "stall", {"duration": 2.0})])
    async with open_websocket_url(sim.ws_url) as ws:
        await subscribed(ws, "a")
        start_at = trio.current_time()
        await nursery.start(partial(schedule.play, sim, on_fault=lambda f: applied.append(
            (trio.current_time() - start_at, f.kind))))
        await trio.sleep(2.0)
        sim.publish("a", "while stalled")  # dropped: a stalled server sends nothing
        await trio.sleep(3.0)
        sim.publish("a", "after")
        assert await ws.get_message() == INVALID_FRAME
        assert await ws.get_message() == "after"
    assert applied == [(1.0, "stall"), (4.0, "malformed")]


def test_a_random_schedule_is_reproducible_from_its_seed_and_stays_within_its_time() -> None:
    def make(seed: int) -> FaultSchedule:
        kinds = ["abrupt_close", "half_open", "malformed"]
        return FaultSchedule.random(random.Random(seed), seconds=600, mean_interval=10, kinds=kinds)

    first = make(7)
    assert first == make(7) != make(8)
    assert 30 < len(first.faults) < 120
    times = [f.at for f in first.faults]
    assert times == sorted(times) and all(0 <= t < 600 for t in times)


def test_an_unknown_fault_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="kind"):
        Fault(0.0, "meteor")
    with pytest.raises(ValueError, match="meteor"):
        FaultSchedule.random(random.Random(1), seconds=10, mean_interval=1, kinds=["meteor"])
