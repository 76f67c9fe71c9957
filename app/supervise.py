"""Keeps the background tasks alive, and says honestly when it cannot.

Every background task of ``serve`` (event writer, worker, scheduler, alert dispatcher; webhook
repair runs inside the worker's full passes) runs under :meth:`Supervisor.run`:

- a task that raises (or returns: a background task never ends by itself) is logged
  (``task.crashed``), counted (``lowerplane_task_restarts_total{task=...}`` on ``/metrics``) and
  restarted after a backoff that doubles up to ``backoff_max``;
- a task that crashes more than ``max_restarts`` times within ``window`` seconds cannot be kept
  alive: the supervisor gives up (``task.gave_up``), records why in :attr:`Supervisor.fatal` and
  calls ``on_fatal``, which makes ``serve`` shut down and exit 1 so systemd or Kubernetes
  restarts the process;
- :meth:`Supervisor.problems` is what ``/healthz`` answers from: a task that is not running
  (between restarts, or given up), or one whose progress probe reports it stuck while it has work
  (the worker with runnable events that has not completed a round for ``stall_after`` seconds).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from app.logs import get_logger
from app.metrics import Metrics

log = get_logger("supervise")

Probe = Callable[[], Awaitable[str | None]]  # None when fine, else why the task is stuck


def describe(exc: BaseException) -> str:
    """One line naming an exception; an exception group is named by its first leaf."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


@dataclass
class TaskState:
    name: str
    running: bool = False
    restarts: int = 0
    last_error: str | None = None
    started_at: float = 0.0
    crashes: deque[float] = field(default_factory=deque)


class Supervisor:
    def __init__(
        self,
        metrics: Metrics | None = None,
        *,
        max_restarts: int = 5,
        window: float = 60.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 8.0,
        clock: Callable[[], float] = time.monotonic,
        on_fatal: Callable[[str], None] | None = None,
    ) -> None:
        self.metrics = metrics
        self.max_restarts = max_restarts
        self.window = window
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.clock = clock
        self.on_fatal = on_fatal
        self.tasks: dict[str, TaskState] = {}
        self.probes: dict[str, Probe] = {}
        self.fatal: str | None = None

    def watch(self, name: str, probe: Probe) -> None:
        """A progress probe for ``name``, consulted by :meth:`problems`."""
        self.probes[name] = probe

    async def run(self, name: str, target: Callable[[], Awaitable[None]]) -> None:
        """Run ``target`` until cancelled, restarting it after each failure (see the module doc)."""
        state = self.tasks.setdefault(name, TaskState(name))
        delay: float | None = None
        while True:
            state.running, state.started_at = True, self.clock()
            try:
                await target()
                error = "returned"  # a background task runs until cancelled
            except asyncio.CancelledError:
                state.running = False
                raise
            except Exception as exc:  # noqa: BLE001 - whatever it was, the task is restarted
                error = describe(exc)
            state.running = False
            state.last_error = error[:300]
            now = self.clock()
            if delay is None or now - state.started_at > self.window:
                delay = self.backoff_initial  # first crash, or it ran well for a while: start afresh
            else:
                delay = min(delay * 2, self.backoff_max)
            state.crashes.append(now)
            while state.crashes and state.crashes[0] < now - self.window:
                state.crashes.popleft()
            if len(state.crashes) > self.max_restarts:
                self.fatal = f"{name}: crashed {len(state.crashes)} times in {self.window:.0f} s, last: {error}"
                log.critical("task.gave_up", task=name, crashes=len(state.crashes), error=error)
                if self.on_fatal is not None:
                    self.on_fatal(self.fatal)
                return
            log.error("task.crashed", task=name, error=error, restart_in=round(delay, 3))
            await asyncio.sleep(delay)
            state.restarts += 1
            if self.metrics is not None:
                self.metrics.task_restarts.labels(name).inc()
            log.info("task.restarted", task=name, restarts=state.restarts)

    async def problems(self) -> dict[str, str]:
        """Task name → why it is not healthy; empty when every task runs and progresses."""
        out: dict[str, str] = {}
        for name, state in self.tasks.items():
            if not state.running:
                why = "gave up" if self.fatal and self.fatal.startswith(name + ":") else "not running"
                out[name] = f"{why} (last error: {state.last_error})"
        for name, probe in self.probes.items():
            if name in out or name not in self.tasks:
                continue
            try:
                stuck = await probe()
            except Exception as exc:  # noqa: BLE001 - a probe that cannot tell is a problem too
                stuck = f"probe failed: {type(exc).__name__}"
            if stuck:
                out[name] = stuck
        return out
