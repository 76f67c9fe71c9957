"""Prometheus metrics (prometheus-client), one registry per application instance."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from itertools import accumulate

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector


class LoopHistogram(Collector):
    """A histogram observed from the event loop's thread only (the webhook receiver's time to 202):
    one bisect and two additions per observation, where prometheus_client's ``Histogram`` takes a
    lock for a bucket and another for the sum, several microseconds per delivery on the receiver's
    hot path (py-spy under bench/ingest_wrk.py). Exposed as a Histogram is (``_bucket``, ``_count``,
    ``_sum``)."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry) -> None:
        self.name, self.documentation = name, documentation
        self.bounds = tuple(float(b) for b in buckets)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0
        registry.register(self)

    def observe(self, amount: float) -> None:
        self.counts[bisect_left(self.bounds, amount)] += 1  # a bucket's bound is inclusive (le)
        self.sum += amount

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation)
        cumulative = list(accumulate(self.counts))
        labels = [repr(b) for b in self.bounds] + ["+Inf"]  # as Histogram writes these bounds
        family.add_metric([], list(zip(labels, cumulative, strict=True)), self.sum)
        yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.ingest = LoopHistogram(
            "lp_webhook_time_to_202_seconds",
            "Time from request to the 202 answer",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=r,
        )
        self.events = Gauge("lp_events", "Events in the log by state", ["state"], registry=r)
        self.queue_depth = Gauge("lp_queue_depth", "Events queued or failed awaiting a retry", registry=r)
        self.oldest_queued = Gauge("lp_oldest_queued_seconds", "Age of the oldest queued event", registry=r)
        self.api_calls = Gauge(
            "lp_bitbucket_api_calls",
            "Bitbucket API calls by endpoint and status",
            ["connection", "endpoint", "status"],
            registry=r,
        )
        self.budget_left = Gauge(
            "lp_bitbucket_budget_remaining", "Requests left in the rolling hour", ["connection"], registry=r
        )
        self.alerts = Counter("lp_alerts", "Alerts by channel and outcome", ["channel", "outcome"], registry=r)
        self.task_restarts = Counter(
            "lp_task_restarts", "Restarts of a background task by its supervisor", ["task"], registry=r
        )
        # issue 13: restriction freshness (age of the last good reading) per workspace and class.
        self.restrictions_age = Gauge(
            "lp_restrictions_age_seconds",
            "Age of the last good branch-restrictions reading: max and mean per class",
            ["workspace", "class", "stat"],
            registry=r,
        )
        self.restrictions_unread = Gauge(
            "lp_restrictions_never_read", "Repositories whose restrictions were never read", ["workspace"], registry=r
        )
        self.results = Gauge("lp_results", "Current results by test and status", ["check", "status"], registry=r)
        # PostgreSQL: the LISTEN connection (live event stream) lost and made again (app/store/pg.py).
        self.listen_reconnects = Counter(
            "lp_pg_listen_reconnects", "Reconnections of the PostgreSQL LISTEN connection", registry=r
        )
        self._listen_reconnects_seen = 0

    def observe_store(self, db: object) -> None:
        """Bring the store's own counters (PostgreSQL's LISTEN reconnections) into the registry."""
        total = int(getattr(db, "listen_reconnects", 0))
        if total > self._listen_reconnects_seen:
            self.listen_reconnects.inc(total - self._listen_reconnects_seen)
            self._listen_reconnects_seen = total

    def observe_ingest(self, seconds: float) -> None:
        self.ingest.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
