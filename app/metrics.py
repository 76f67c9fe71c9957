"""Prometheus metrics (prometheus-client), one registry per application instance."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.ingest = Histogram(
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
