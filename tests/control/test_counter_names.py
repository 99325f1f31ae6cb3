"""One name, one meaning: ``records`` count MarketData records, ``messages`` complete WebSocket
messages, in the venue's counters, the status document, the history and the metrics alike."""

from __future__ import annotations

from types import SimpleNamespace

import trio

from feedd.control import report
from feedd.control.history import History
from feedd.control.metrics import Metrics
from feedd.fanout.hub import Hub
from feedd.feed.status import VenueStatus


def bybit_status() -> VenueStatus:
    """Two WebSocket messages of ten trades each."""
    status = VenueStatus("bybit")
    status.messages = 2
    status.records = 20
    return status


def fake_service(status: VenueStatus) -> SimpleNamespace:
    service = SimpleNamespace(statuses={status.venue: status}, venues={}, hub=Hub(), publisher=None,
                              nats=None, callbacks=[])
    service.subscribers = lambda: report.subscribers(service)
    service.metrics = Metrics(service)
    return service


def test_the_status_document_says_messages_for_websocket_messages_and_records_for_records() -> None:
    async def snapshot() -> dict[str, object]:
        return bybit_status().snapshot()

    document = trio.run(snapshot)
    assert (document["messages"], document["records"]) == (2, 20)


def test_a_restarted_venue_carries_both_counts_under_their_own_names() -> None:
    again = VenueStatus("bybit")
    again.carry_totals(bybit_status())
    assert (again.messages, again.records) == (2, 20)


def test_the_history_totals_take_messages_and_records_each_from_its_own_counter() -> None:
    service = fake_service(bybit_status())
    totals = report.totals(service)
    assert (totals["bybit"].messages, totals["bybit"].records) == (2, 20)
    history = History()
    history.sample(totals)
    service.statuses["bybit"].messages, service.statuses["bybit"].records = 3, 30
    history.sample(report.totals(service))
    venue = history.snapshot()["venues"]["bybit"]
    assert (venue["messages"], venue["records"]) == ([1], [10])


def test_the_metrics_count_websocket_messages_in_feedd_messages_and_records_in_feedd_records() -> None:
    service = fake_service(bybit_status())
    text = service.metrics.render()[0].decode()
    assert 'feedd_messages_total{venue="bybit"} 2.0' in text
    assert 'feedd_records_total{venue="bybit"} 20.0' in text
    assert "# HELP feedd_messages_total WebSocket messages read" in text
