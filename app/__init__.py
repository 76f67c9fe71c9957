"""lowerplane-bitbucket: read-only Bitbucket Cloud compliance monitoring.

One road for every trigger (see README and ../shared/docs/architecture.md)::

    receive   Bitbucket --webhook--> web (verify, parse: bitbucket.sansio) ---+
              scheduler, reconcile (cron), CLI, API, expiries --(events)------+
    log       store.events (the event log) <----------------------------------+
    plan      worker claims -> planner.plan(event), or for a pass: reconcile lists the
              repositories -> planner.full_pass -> [Fetch]
    fetch     fetch.fetch_all -> bitbucket.client -> store.snapshots
    evaluate  evaluate: store.facts (snapshots -> facts) -> checks (pure) -> findings.diff (pure)
    record    store.results + history + store.outbox (one transaction)
    notify    notify.dispatcher -> Slack, email
    supervise: writer, worker, scheduler and dispatcher restarted on a crash; /healthz tells

``bitbucket/`` talks to Bitbucket Cloud (read-only, allow-listed), ``sandbox/`` is an independent
Bitbucket stand-in used by the demo, the tests and the benchmarks, ``checks/`` holds the eight
security tests, ``store/`` is the only place with SQL.
"""

__version__ = "0.1.0"
