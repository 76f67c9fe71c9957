"""lowerplane-bitbucket: read-only Bitbucket Cloud compliance monitoring.

The pipeline (see README and ../shared/docs/architecture.md)::

    Bitbucket --webhook--> web --verify/parse (bitbucket.sansio)--> store.events --> 202
    reconcile / CLI / API ------------------------------------------> store.events
    worker: planner.plan(event) -> fetches (coalesced) -> bitbucket.client -> store.snapshots
            -> checks (pure) -> findings.diff (pure) -> store.results + store.outbox (one transaction)
            -> notify
    supervise: writer, worker, scheduler and dispatcher restarted on a crash; /healthz tells

``bitbucket/`` talks to Bitbucket Cloud (read-only, allow-listed), ``sandbox/`` is an independent
Bitbucket stand-in used by the demo, the tests and the benchmarks, ``checks/`` holds the eight
security tests, ``store/`` is the only place with SQL.
"""

__version__ = "0.1.0"
