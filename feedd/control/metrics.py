"""Prometheus metrics of one service, in the text exposition format (``GET /metrics``).

Nearly everything is read at scrape time from the counters the feed keeps anyway (per venue,
updated once per batch by the readers; per subscriber, by the sinks), so metrics add no work to
the hot path. The one exception is the exchange → receive delay histogram, which needs an
observation: :class:`~feedd.fanout.delay.DelaySink`, a hub sink, makes one per batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from feedd.fanout.delay import DelaySink
from feedd.feed.gates import THROTTLING
from feedd.feed.status import VenueState

if TYPE_CHECKING:
    from feedd.control.service import WebSocketService
    from feedd.fanout.nats import NatsSink
    from feedd.record.writer import Recorder

#: seconds; exchange → receive delays span sub-millisecond (colocated) to seconds (a stalled venue)
DELAY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STATES: tuple[VenueState, ...] = ("connecting", "connected", "backoff", "failed", "idle", "disabled")


class _ServiceCollector(Collector):
    """Reads the service's live counters at scrape time."""

    def __init__(self, service: WebSocketService) -> None:
        self._service = service

    def collect(self) -> Iterator[Metric]:
        service = self._service
        venue = ["venue"]

        def counter(name: str, doc: str, labels: list[str] = venue) -> CounterMetricFamily:
            return CounterMetricFamily(f"feedd_{name}", doc, labels=labels)

        def gauge(name: str, doc: str, labels: list[str] = venue) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"feedd_{name}", doc, labels=labels)

        messages = counter("messages", "WebSocket messages read")
        records = counter("records", "records delivered to the consumers (after validation)")
        rejected = counter("rejected_records", "records refused by validation", ["venue", "reason"])
        decode_errors = counter("decode_errors", "messages that could not be decoded")
        gaps = counter("sequence_gaps", "gaps in the venue's message sequence numbers")
        backfilled = counter("backfilled_trades", "trades missed live and fetched from the venue's REST")
        lost = counter("lost_trades", "trades missed live that the venue's REST could not give")
        reconnects = counter("reconnects", "connection attempts that ended (each is followed by a reconnect)")
        rotations = counter("rotations", "connections replaced make-before-break (planned, no gap)")
        failures = gauge("consecutive_failures", "failed connection attempts in a row (worst connection)")
        state = gauge("venue_state", "the venue's state: 1 for the current one", ["venue", "state"])
        connections = gauge("connections", "connections by state", ["venue", "state"])
        age = gauge("seconds_since_last_message", "seconds since the venue's last message (absent: none yet)")
        subscriptions = gauge("subscriptions", "subscriptions (symbol and channel)", ["venue", "state"])
        attempts = counter("connection_attempts", "WebSocket handshakes started")
        paced = counter("paced_connection_attempts", "handshakes that waited for the venue's connect limit")
        refused = counter("handshake_refused", "handshakes answered with an HTTP status, not 101",
                          ["venue", "status"])
        throttled = counter("handshake_throttled", "handshakes refused with 429 or 418 (a wait for the host)",
                            ["venue", "status"])
        throttle_wait = gauge("handshake_throttle_seconds",
                              "seconds until the venue's host takes handshakes again (0: it does)")
        for name, status in service.statuses.items():
            messages.add_metric([name], status.messages)
            records.add_metric([name], status.records)
            for reason, count in sorted(status.rejected.items()):
                rejected.add_metric([name, reason], count)
            decode_errors.add_metric([name], status.decode_errors)
            gaps.add_metric([name], status.sequence_gaps)
            backfilled.add_metric([name], status.backfilled)
            lost.add_metric([name], status.lost_trades)
            reconnects.add_metric([name], status.reconnects)
            rotations.add_metric([name], status.rotations)
            failures.add_metric([name], status.consecutive_failures)
            current = status.state
            by_state = {s: 0 for s in STATES}
            for conn in status.connections.values():
                by_state[conn.state] += 1
            for each in STATES:
                state.add_metric([name, each], 1 if each == current else 0)
                connections.add_metric([name, each], by_state[each])
            seconds = status.seconds_since_last_message()
            if seconds is not None:
                age.add_metric([name], seconds)
            counts = {"active": 0, "pending": 0, "refused": 0, "delisted": 0}
            supervisor = service.venues.get(name)
            if supervisor is not None:
                for sub in supervisor.subscriptions():
                    counts[supervisor.state_of(sub)] += 1
            for sub_state, count in counts.items():
                subscriptions.add_metric([name, sub_state], count)
            handshakes = status.handshakes
            attempts.add_metric([name], handshakes.attempts)
            paced.add_metric([name], handshakes.paced)
            for code, count in sorted(handshakes.refused.items()):
                refused.add_metric([name, str(code)], count)
                if code in THROTTLING:
                    throttled.add_metric([name, str(code)], count)
            throttle_wait.add_metric([name], max((g.wait() for g in status.hosts.values()), default=0.0))
        yield from (messages, records, rejected, decode_errors, gaps, backfilled, lost, reconnects, rotations,
                    failures, state, connections, age, subscriptions, attempts, paced, refused, throttled,
                    throttle_wait)

        who = ["subscriber", "kind"]
        delivered = counter("subscriber_delivered_records", "records handed to a subscriber", who)
        dropped = counter("subscriber_dropped_records", "records a slow subscriber lost (oldest first)", who)
        pending = gauge("subscriber_pending_records", "records waiting in a subscriber's buffer", who)
        errors = counter("callback_errors", "exceptions raised by a data callback", who)
        for info in service.subscribers():
            labels = [info.name, info.kind]
            delivered.add_metric(labels, info.delivered)
            dropped.add_metric(labels, info.dropped)
            pending.add_metric(labels, info.pending)
            if info.kind == "callback":
                errors.add_metric(labels, info.errors)
        yield from (delivered, dropped, pending, errors)

        hub = service.hub
        yield CounterMetricFamily("feedd_hub_records", "records fanned out by the hub", value=hub.records)
        yield CounterMetricFamily("feedd_hub_batches", "batches fanned out by the hub", value=hub.batches)
        yield CounterMetricFamily("feedd_feed_events", "disconnect and reconnect events passed to consumers",
                                  value=hub.events)
        if service.publisher is not None:
            yield GaugeMetricFamily("feedd_unix_subscribers", "Unix-socket subscribers connected",
                                    value=service.publisher.clients)
            yield CounterMetricFamily("feedd_unix_dropped_records",
                                      "records dropped over all Unix subscribers, past ones included",
                                      value=service.publisher.records_dropped)
        if service.nats is not None:
            yield from _nats_metrics(service.nats)
        recorder = getattr(service, "recorder", None)  # a service object without one: none
        if recorder is not None:
            yield from _recorder_metrics(recorder)


#: the NATS sink's counters: (status key, metric name, help)
_NATS_COUNTERS = (
    ("published", "nats_published_records", "records written to NATS (a batch sent again counts again)"),
    ("acked", "nats_acked_records", "records the JetStream stream confirmed (duplicates included)"),
    ("duplicates", "nats_duplicate_records", "acked records the stream already held (same message id)"),
    ("rejected", "nats_rejected_records", "records the stream refused"),
    ("dropped", "nats_dropped_records", "records dropped because the NATS sink's buffer was full"),
    ("gaps", "nats_gaps", "runs of dropped records"),
    ("reconnects", "nats_reconnects", "NATS connections lost"),
)


def _nats_metrics(sink: NatsSink) -> Iterator[Metric]:
    yield GaugeMetricFamily("feedd_nats_connected", "1 while connected to NATS with the stream checked",
                            value=1 if sink.connected else 0)
    yield GaugeMetricFamily("feedd_nats_buffered_records",
                            "records waiting for NATS (buffer and batch in flight)", value=sink.buffered)
    for key, name, doc in _NATS_COUNTERS:
        yield CounterMetricFamily(f"feedd_{name}", doc, value=getattr(sink, key))


#: the recorder's counters: (status key, metric name, help)
_RECORDER_COUNTERS = (
    ("files", "record_files", "recording files opened"),
    ("bytes", "record_bytes", "bytes written to recording files (compressed)"),
    ("frames", "record_frames", "frames written to recording files"),
    ("dropped", "record_dropped_frames",
     "frames not recorded (the recorder's buffer full, or a write error)"),
    ("errors", "record_errors", "failed opens, writes and deletes of recording files"),
    ("deleted", "record_deleted_files", "recording files deleted to stay within max_bytes"),
)


def _recorder_metrics(recorder: Recorder) -> Iterator[Metric]:
    snapshot = recorder.snapshot()
    yield GaugeMetricFamily("feedd_record_open_files", "recording files open now",
                            value=snapshot["open_files"])
    yield GaugeMetricFamily("feedd_record_kept_bytes", "bytes of recordings kept in the directory",
                            value=snapshot["kept_bytes"])
    yield GaugeMetricFamily("feedd_record_queued_frames", "frames waiting for the recorder's task",
                            value=snapshot["queued"])
    for key, name, doc in _RECORDER_COUNTERS:
        yield CounterMetricFamily(f"feedd_{name}", doc, value=snapshot[key])


class Metrics:
    """One service's registry: its live counters and the delay histogram."""

    def __init__(self, service: WebSocketService) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.delay = Histogram(
            "feedd_exchange_receive_delay_seconds",
            "exchange timestamp to feedd receive time, newest record of each batch",
            ["venue"],
            buckets=DELAY_BUCKETS,
            registry=self.registry,
        )
        self.sink = DelaySink(self.delay)
        self.registry.register(_ServiceCollector(service))

    def delay_counts(self) -> dict[str, tuple[float, ...]]:
        """Per venue, the delay histogram's cumulative bucket counts (``DELAY_BUCKETS``, then
        +Inf), for :mod:`feedd.control.history`'s percentiles."""
        found: dict[str, list[float]] = {}
        for metric in self.delay.collect():
            for sample in metric.samples:
                if sample.name.endswith("_bucket"):
                    found.setdefault(sample.labels["venue"], []).append(sample.value)
        return {venue: tuple(counts) for venue, counts in found.items()}

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition and its content type, in the format the scraper's Accept asks for
        (Prometheus text 0.0.4 unless it asks for a newer text format or OpenMetrics)."""
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type
