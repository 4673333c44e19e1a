"""Prometheus metrics (prometheus-client), one registry per gateway so tests can run several."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

__all__ = ["Metrics"]

#: an admission is a round trip and a commit: milliseconds, up to the seconds a platform waits
_ADMIT_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _AdmissionStatements(Collector):
    """The admission batcher's own counters (storage/admission.py), read when scraped, so the
    webhook path pays nothing for them."""

    def __init__(self) -> None:
        self.counts: Callable[[], tuple[int, int]] = lambda: (0, 0)

    def collect(self) -> Iterator[CounterMetricFamily]:
        statements, events = self.counts()
        yield CounterMetricFamily("soulgate_admission_statements", "Statements that admitted inbound events "
                                  "(events that arrive together share one)", value=statements)
        yield CounterMetricFamily("soulgate_admission_events", "Inbound events sent to the inbox by those "
                                  "statements (events / statements = mean group size)", value=events)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.admitted = Counter("soulgate_admitted", "Envelopes admitted to the inbox", ["channel"], registry=r)
        self.duplicates = Counter(
            "soulgate_duplicates", "Inbound events dropped as duplicates", ["channel"], registry=r
        )
        self.turns = Counter("soulgate_turns", "Turns completed", ["outcome"], registry=r)
        self.turn_seconds = Histogram("soulgate_turn_seconds", "Time to run one turn", registry=r)
        self.delivered = Counter("soulgate_delivered", "Chunks delivered", ["channel"], registry=r)
        self.delivery_failures = Counter(
            "soulgate_delivery_failures", "Failed send attempts", ["channel", "kind"], registry=r
        )
        self.dead_letters = Counter("soulgate_dead_letters", "Chunks dead-lettered", ["channel"], registry=r)
        self.plugin_errors = Counter(
            "soulgate_plugin_errors", "Plugin hook failures", ["plugin", "hook"], registry=r
        )
        self.queue_depth = Gauge("soulgate_queue_depth", "Live rows per queue", ["queue", "status"], registry=r)
        self.ready = Gauge("soulgate_ready", "1 when the gateway is ready", registry=r)
        self.admit_seconds = Histogram(
            "soulgate_admit_seconds", "Time to commit one inbound event to the inbox (what the platform "
            "waits for before its acknowledgement)", ["channel"], buckets=_ADMIT_BUCKETS, registry=r)
        self._admissions = _AdmissionStatements()
        r.register(self._admissions)

    def watch_admissions(self, counts: Callable[[], tuple[int, int]]) -> None:
        """Expose the admission statements and events that ``counts`` returns when scraped."""
        self._admissions.counts = counts

    def render(self) -> bytes:
        return generate_latest(self.registry)
