"""Prometheus metrics (prometheus-client), one registry per gateway so tests can run several."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics"]


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

    def render(self) -> bytes:
        return generate_latest(self.registry)
