"""``/healthz`` follows the feed; ``/metrics`` is Prometheus text that says what the status says."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import attrs
import pytest
import trio
from harness import (
    API,
    TIMEOUT,
    Subscriber,
    running,
    simulator,
    subscribe_body,
    temporary_workdir,
    write_config,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from feedd.config import Config
from feedd.control.service import WebSocketService
from feedd.feed.status import VenueStatus
from feedd.http.client import format_status
from feedd.model import MarketData

T0 = datetime(2024, 8, 8, 6, 53, 2, 668000, tzinfo=UTC)
RECORD = MarketData(exchange="binance", symbol="BTCUSDT", kind="trade", price=61837.63, volume=0.02,
                    timestamp=T0, received_at=T0, side="buy", trade_id="1")


@pytest.fixture
def workdir() -> Iterator[Path]:
    with temporary_workdir() as path:
        yield path


async def test_health_is_503_while_the_exchange_is_silent_and_200_again_after_recovery(
    workdir: Path,
) -> None:
    async with simulator() as spot:
        config = write_config(workdir, spot, stale_after=0.5)
        async with running(config) as (daemon, http):
            with trio.fail_after(TIMEOUT):
                client = await Subscriber.connect(daemon.config.unix.path)
                await client.record()
                healthy = await http.get("/healthz")
                spot.set_silent(True)
                # the watchdog gives up on the silent connection; the new one hears nothing either
                await spot.wait_until(lambda: spot.connections_accepted >= 2)
                silent = await http.get("/healthz")
                status = (await http.get(f"{API}/status")).json()
                spot.set_silent(False)
                recovered_at = datetime.now(UTC)
                await client.until(lambda r: r.received_at > recovered_at)
                recovered = await http.get("/healthz")
    assert healthy.status_code == 200 and healthy.json() == {"status": "ok"}
    assert silent.status_code == 503
    assert silent.json()["status"] == "down"
    assert any(reason.startswith("binance/stream#1") for reason in silent.json()["reasons"])
    assert status["state"] == "down" and status["reasons"] == silent.json()["reasons"]
    assert recovered.status_code == 200
    # the subscriber was told which interval to distrust (and, after it, what its backfill got)
    feed_lines = [n for n in client.notices if n["type"] != "backfill"]
    assert [(n["type"], n["exchange"], n["symbols"]) for n in feed_lines] == [
        ("disconnect", "binance", ["BTCUSDT"]), ("reconnect", "binance", ["BTCUSDT"])
    ]
    assert feed_lines[0]["reason"] == "stale feed: no data for 0.5 s"
    assert feed_lines[1]["gap_seconds"] > 0


async def test_health_is_503_when_the_feed_is_disabled(workdir: Path) -> None:
    async with simulator() as spot, running(write_config(workdir, spot, enabled=False)) as (_, http):
        with trio.fail_after(TIMEOUT):
            answer = await http.get("/healthz")
    assert answer.status_code == 503
    assert answer.json() == {"status": "down", "reasons": ["no venue is enabled"]}


def samples(text: str) -> dict[str, list[Sample]]:
    found: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append(sample)
    return found


def value(found: dict[str, list[Sample]], name: str, **labels: str) -> float:
    [sample] = [s for s in found[name] if all(s.labels.get(k) == v for k, v in labels.items())]
    return sample.value


async def test_metrics_parse_as_prometheus_text_and_agree_with_the_status(workdir: Path) -> None:
    async with simulator() as spot, running(write_config(workdir, spot)) as (daemon, http):
        with trio.fail_after(TIMEOUT):
            client = await Subscriber.connect(daemon.config.unix.path)
            await client.record()
            spot.send_malformed()
            await client.until(lambda r: daemon.statuses["binance"].decode_errors >= 1)
            answer = await http.get("/metrics")
            status = daemon.statuses["binance"]
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    found = samples(answer.text)
    venue = {"venue": "binance"}
    # read at scrape time from the counters the status shows; records kept coming since
    assert 0 < value(found, "feedd_records_total", **venue) <= status.records
    assert 0 < value(found, "feedd_messages_total", **venue) <= status.messages
    assert value(found, "feedd_decode_errors_total", **venue) == 1
    assert value(found, "feedd_reconnects_total", **venue) == 0
    assert value(found, "feedd_venue_state", venue="binance", state="connected") == 1
    assert value(found, "feedd_venue_state", venue="binance", state="failed") == 0
    assert value(found, "feedd_connections", venue="binance", state="connected") == 1
    assert value(found, "feedd_subscriptions", venue="binance", state="active") == 2
    assert value(found, "feedd_seconds_since_last_message", **venue) >= 0
    assert value(found, "feedd_exchange_receive_delay_seconds_count", **venue) >= 1
    buckets = [s for s in found["feedd_exchange_receive_delay_seconds_bucket"] if s.labels["le"] == "+Inf"]
    assert buckets[0].value == value(found, "feedd_exchange_receive_delay_seconds_count", **venue)
    assert value(found, "feedd_subscriber_dropped_records_total", subscriber="unix#1", kind="unix") == 0
    assert value(found, "feedd_subscriber_delivered_records_total", subscriber="unix#1", kind="unix") >= 1
    assert value(found, "feedd_hub_records_total") <= status.records


def test_metrics_name_rejections_by_reason_and_each_callbacks_drops_and_errors() -> None:
    service = WebSocketService(Config())  # not running: the collector reads whatever is there
    status = service.statuses["binance"] = VenueStatus("binance")
    status.rejected.update({"unknown_symbol": 3, "timestamp_skew": 1})
    sink = service.add_data_callback(lambda record: None, buffer=1)
    sink.offer([RECORD, RECORD, RECORD], [])
    sink.errors = 2
    body, content_type = service.metrics.render("application/openmetrics-text; version=1.0.0")
    found = samples(body.decode())
    assert content_type.startswith("application/openmetrics-text")
    by_reason = {s.labels["reason"]: s.value for s in found["feedd_rejected_records_total"]}
    assert by_reason == {"unknown_symbol": 3, "timestamp_skew": 1}
    who = {"subscriber": sink.name, "kind": "callback"}
    assert value(found, "feedd_subscriber_dropped_records_total", **who) == 2
    assert value(found, "feedd_subscriber_pending_records", **who) == 1
    assert value(found, "feedd_callback_errors_total", **who) == 2
    assert value(found, "feedd_venue_state", venue="binance", state="connecting") == 1
    assert "feedd_seconds_since_last_message" not in found  # nothing received yet: no sample


def test_the_delay_histogram_takes_one_observation_per_batch_from_its_newest_record() -> None:
    service = WebSocketService(Config())
    late = attrs.evolve(RECORD, received_at=RECORD.timestamp + timedelta(milliseconds=30))
    ahead = attrs.evolve(RECORD, received_at=RECORD.timestamp - timedelta(seconds=1))
    service.metrics.sink.offer([RECORD, late], [])
    service.metrics.sink.offer([ahead], [])  # our clock behind the exchange's: recorded as 0
    found = samples(service.metrics.render()[0].decode())
    venue = {"venue": "binance"}
    assert value(found, "feedd_exchange_receive_delay_seconds_count", **venue) == 2
    assert value(found, "feedd_exchange_receive_delay_seconds_sum", **venue) == pytest.approx(0.03)
    assert value(found, "feedd_exchange_receive_delay_seconds_bucket", venue="binance", le="0.001") == 1


COUNTERS = ("messages", "records", "reconnects")


async def test_counters_never_go_backwards_when_a_connection_is_closed_by_an_unsubscribe(
    workdir: Path,
) -> None:
    async with simulator() as spot, running(write_config(workdir, spot)) as (daemon, http):
        with trio.fail_after(TIMEOUT):
            client = await Subscriber.connect(daemon.config.unix.path)
            await client.record()
            spot.drop_connections()  # one reconnect, counted on the connection that will go
            await spot.wait_until(lambda: spot.connections_accepted >= 2)
            await spot.wait_subscribed({"btcusdt@trade", "btcusdt@ticker"})
            before = (await http.get(f"{API}/status")).json()["exchanges"]["binance"]
            scraped_before = samples((await http.get("/metrics")).text)
            # the last symbol of the shard: its connection is closed and its status dropped
            answer = await http.delete(f"{API}/unsubscribe?exchange=binance&symbol=BTCUSDT")
            after = (await http.get(f"{API}/status")).json()["exchanges"]["binance"]
            scraped_after = samples((await http.get("/metrics")).text)
    assert answer.status_code == 200, answer.text
    assert before["reconnects"] == 1 and before["connections"] and not after["connections"]
    for key in COUNTERS:
        assert after[key] >= before[key], (key, before[key], after[key])
    for reason, count in before["rejected"].items():
        assert after["rejected"][reason] >= count, reason
    venue = {"venue": "binance"}
    for name in ("feedd_reconnects_total", "feedd_messages_total", "feedd_records_total"):
        assert value(scraped_after, name, **venue) >= value(scraped_before, name, **venue), name
    assert value(scraped_after, "feedd_reconnects_total", **venue) == 1


async def test_a_venue_with_nothing_subscribed_is_idle_and_healthy_until_subscribed_again(
    workdir: Path,
) -> None:
    async with simulator() as spot, running(write_config(workdir, spot)) as (daemon, http):
        with trio.fail_after(TIMEOUT):
            await daemon.initialize()
            await spot.wait_subscribed({"btcusdt@trade", "btcusdt@ticker"})
            answer = await http.delete(f"{API}/unsubscribe?exchange=binance&symbol=BTCUSDT")
            status = (await http.get(f"{API}/status")).json()
            summary = daemon.summary()
            health = await http.get("/healthz")
            scraped = samples((await http.get("/metrics")).text)
            again = await http.post(f"{API}/subscribe", content=subscribe_body("BTCUSDT"))
            client = await Subscriber.connect(daemon.config.unix.path)
            await client.record()  # streaming again: connected and fresh
            resumed = (await http.get(f"{API}/status")).json()
    assert answer.status_code == 200, answer.text
    binance = status["exchanges"]["binance"]
    assert binance["state"] == "idle"
    assert binance["connections"] == [] and binance["subscriptions"] == []
    assert status["state"] == "ok" and status["reasons"] == []
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert value(scraped, "feedd_venue_state", venue="binance", state="idle") == 1
    assert value(scraped, "feedd_venue_state", venue="binance", state="connecting") == 0
    [row] = [line for line in format_status(status, "http://x").splitlines() if line.startswith("binance")]
    assert row.split()[1] == "idle"
    assert summary == ("ok: 0/1 venue(s) connected, 1 idle (nothing subscribed), 0 subscription(s), "
                       "0 socket subscriber(s)")
    assert again.status_code == 200, again.text
    assert resumed["exchanges"]["binance"]["state"] == "connected"
