"""`tutord run`: the long-running service's main loop.

It checks the database is migrated, takes leadership (`daemon/service/leader.py`), builds
the jobs of `daemon/service/jobs.py` from the settings in an in-memory APScheduler 3
`BackgroundScheduler` (fixed ids, `coalesce`, `max_instances=1`, an hour of misfire grace;
the scheduler's job store is never shared or persisted: last runs live in `service_jobs`;
the jobs that use the model, cycles and synthesis, run one at a time: one that finds
another running is skipped), serves the HTTP API when enabled, tells systemd READY=1, and
then loops: WATCHDOG=1 pings (so a hung loop trips the watchdog), lease renewal at a third
of its TTL (also while a cycle step runs in a worker thread), STATUS= lines. SIGHUP reloads
`tutord.toml` and rebuilds the jobs. SIGTERM (or SIGINT) stops taking jobs, asks a running
training stage to checkpoint and stop (`stages.launch.stop_running`; killed after
`service.stop_timeout_s`), waits for the job threads, releases leadership and returns 0; a
cycle cut short stays resumable and the next start finishes it. A second SIGTERM stops at
once. `run_once` runs every job that is due and returns (for cron users).

It does not implement the jobs, the API or the lease protocol.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import Engine

from daemon import lease, migrate
from daemon.home import Home
from daemon.service.jobs import JobSpec, cycle_wanted, is_due, make_jobs, run_recorded
from daemon.service.leader import Leadership, leadership_for
from daemon.service.notify import Notifier, watchdog_interval
from daemon.settings import Settings
from stages import launch

log = logging.getLogger(__name__)

MISFIRE_GRACE_S = 3600
MODEL_JOBS = {"cycle": "a cycle", "cycle-check": "a cycle", "synth": "synthesis"}
"""Jobs that use the model, one at a time in a process: what each is called when it makes
another wait."""


class ServiceError(Exception):
    """The service cannot start (exit 2)."""


def check_schema(engine: Engine) -> None:
    current, head = migrate.current_revision(engine), migrate.head_revision()
    if current != head:
        raise ServiceError(
            f"the database is at migration {current or 'none'}, this tutord needs {head}: "
            "run `tutord db upgrade`"
        )


class Service:
    """One `tutord run` process."""

    def __init__(
        self,
        engine: Engine,
        home: Home,
        load_settings: Callable[[], Settings],
        notifier: Notifier | None = None,
    ) -> None:
        self.engine = engine
        self.home = home
        self.load_settings = load_settings
        self.settings = load_settings()
        self.notifier = notifier or Notifier()
        self.holder = lease.holder_id()
        ttl = timedelta(seconds=self.settings.service.lease_ttl_s)
        self.leadership: Leadership = leadership_for(engine, home.root, self.holder, ttl)
        self.stop_event = threading.Event()
        self.reload_event = threading.Event()
        self.cycle_lock = threading.Lock()
        self.model_job: str | None = None  # the id of the model job holding cycle_lock
        self.started_at = time.time()
        self.scheduler: BackgroundScheduler | None = None
        self.http: Any = None
        self.api_state: Any = None
        self._stops = 0

    # ------------------------------------------------------------------ jobs

    def jobs(self) -> list[JobSpec]:
        specs = make_jobs(
            self.engine, self.home, self.settings, leading=lambda: self.leadership.is_leader
        )
        return [self._one_model_job_at_a_time(j) if j.id in MODEL_JOBS else j for j in specs]

    def _one_model_job_at_a_time(self, job: JobSpec) -> JobSpec:
        """`job`, skipped while another model job (a cycle, synthesis) runs in this process."""

        def run() -> str:
            if not self.cycle_lock.acquire(blocking=False):
                return f"skipped: {MODEL_JOBS.get(self.model_job or '', 'a model job')} is running"
            self.model_job = job.id
            try:
                return job.run()
            finally:
                self.model_job = None
                self.cycle_lock.release()

        return JobSpec(job.id, run, job.interval_s, job.cron)

    def _schedule(self, scheduler: BackgroundScheduler) -> None:
        now = datetime.now(UTC)
        for job in self.jobs():
            if not job.enabled:
                continue
            trigger = (
                CronTrigger.from_crontab(job.cron, timezone="UTC")
                if job.cron
                else IntervalTrigger(seconds=job.interval_s, timezone=UTC)
            )
            scheduler.add_job(
                run_recorded,
                trigger,
                args=(self.engine, job),
                id=job.id,
                name=job.id,
                replace_existing=True,
                coalesce=True,
                max_instances=1,
                misfire_grace_time=MISFIRE_GRACE_S,
                next_run_time=None if job.cron else now,
            )

    # ------------------------------------------------------------------ signals

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self._stops += 1
        if self._stops > 1:
            log.warning("second stop signal: killing the running stage and exiting")
            launch.stop_running(0.0)
            os._exit(0)
        log.info("stop requested (%s)", signal.Signals(signum).name)
        self.stop_event.set()

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self.reload_event.set()

    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)

    # ------------------------------------------------------------------ the loop

    def status_line(self) -> str:
        role = "leader" if self.leadership.is_leader else "follower"
        return f"{role}; {self.leadership.describe()}"

    def run(self) -> int:
        self.install_signals()  # first: a stop asked for while starting is still graceful
        check_schema(self.engine)
        self.leadership.try_acquire()
        scheduler = BackgroundScheduler(
            timezone=UTC, executors={"default": ThreadPoolExecutor(max_workers=4)}
        )
        self._schedule(scheduler)
        scheduler.start()
        self.scheduler = scheduler
        self._start_http()
        self.notifier.ready(self.status_line())
        log.info("tutord run: %s; home %s", self.status_line(), self.home.root)
        self._loop()
        return self._shutdown()

    def _loop(self) -> None:
        svc = self.settings.service
        renew_every = svc.lease_ttl_s / 3
        ping_every = watchdog_interval()
        tick = min(x for x in (1.0, renew_every, ping_every) if x is not None)
        next_renew = time.monotonic() + renew_every
        while not self.stop_event.wait(tick):
            if ping_every is not None:
                self.notifier.watchdog()
            if time.monotonic() >= next_renew:
                next_renew = time.monotonic() + renew_every
                was = self.leadership.is_leader
                leads = self.leadership.renew() if was else self.leadership.try_acquire()
                if leads != was:
                    self.notifier.status(self.status_line())
                    log.warning("leadership changed: %s", self.status_line())
                self._publish_state()
            if self.reload_event.is_set():
                self.reload_event.clear()
                self._reload()

    def _publish_state(self) -> None:
        """What the HTTP API reports about this process (leader or follower)."""
        if self.api_state is not None:
            self.api_state.leader = self.leadership.is_leader
            self.api_state.holder = self.holder

    def _reload(self) -> None:
        try:
            settings = self.load_settings()
        except Exception as exc:  # a bad edit keeps the running configuration
            log.error("reload refused, keeping the running configuration: %s", exc)
            return
        self.settings = settings
        assert self.scheduler is not None
        self.scheduler.remove_all_jobs()
        self._schedule(self.scheduler)
        log.info("configuration reloaded; jobs rebuilt")
        self.notifier.status(f"reloaded; {self.status_line()}")

    def _shutdown(self) -> int:
        timeout = self.settings.service.stop_timeout_s
        self.notifier.stopping("stopping: finishing the step in progress")
        if self.http is not None:
            self.http.should_exit = True
        assert self.scheduler is not None
        self.scheduler.shutdown(wait=False)
        stopper = threading.Thread(target=launch.stop_running, args=(timeout,), daemon=True)
        stopper.start()
        deadline = time.monotonic() + timeout + 5
        waiting = [t for t in threading.enumerate() if t.name.startswith("ThreadPoolExecutor")]
        for thread in waiting:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t for t in waiting if t.is_alive()]
        self.leadership.release()
        log.info("tutord run stopped")
        if alive:
            log.warning("a job did not stop within %.0f s; exiting anyway", timeout)
            logging.shutdown()
            os._exit(0)
        return 0

    def _start_http(self) -> None:
        svc = self.settings.service
        if not svc.http_enabled:
            return
        import uvicorn

        from daemon.service.api import ServiceState, make_app

        state = ServiceState(started_at=self.started_at)
        self.api_state = state
        self._publish_state()
        app = make_app(self.engine, self.home, self.settings, state=state)
        config = uvicorn.Config(app, host=svc.http_host, port=svc.http_port, log_level="warning")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name="http", daemon=True)
        thread.start()
        self.http = server


def run_once(engine: Engine, home: Home, settings: Settings) -> dict[str, str]:
    """Run every job that is due (and a cycle if one is wanted), then return their outcomes."""
    check_schema(engine)
    holder = lease.holder_id()
    ttl = timedelta(seconds=settings.service.lease_ttl_s)
    leadership = leadership_for(engine, home.root, holder, ttl)
    leadership.try_acquire()
    outcomes: dict[str, str] = {}
    try:
        for job in make_jobs(engine, home, settings, leading=lambda: leadership.is_leader):
            due = is_due(engine, job)
            if job.id == "cycle-check":
                due = due or cycle_wanted(engine, settings) is not None
            if due:
                outcomes[job.id] = run_recorded(engine, job)
    finally:
        leadership.release()
    return outcomes
