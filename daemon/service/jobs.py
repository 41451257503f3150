"""The jobs of `tutord run`, what each does, when each is due, and the record of its runs.

Jobs (ids fixed; built from the settings at every start, never stored by the scheduler):
- `spool`: ingest the files waiting in the spool folder (`daemon/service/spool.py`);
- `synth`: one synthesis run with the production policy (`daemon.synth_run.run_synth`, as
  `tutord synth`) on the `service.synth_cron` schedule (off by default: every cycle
  synthesizes first anyway), on the leader only, skipped while a cycle is unfinished (the
  runner also keeps it from overlapping a running cycle); each run's seed is the number of
  synthesis runs stored, so successive runs choose other prompts;
- `cycle`: run (or resume) one improvement cycle (`daemon/cycle.run_cycle`), on the
  `service.cycle_cron` schedule, or when `service.cycle_min_fresh` interactions arrived
  since the last cycle started, or at once when a cycle is unfinished (a stop or crash
  left it; it resumes where it was);
- `snapshot`: rebuild the drift report;
- `retention`: delete adapters beyond `adapters.keep_last` (production's line is kept);
- `upkeep`: database statistics (`ANALYZE`; SQLite also `PRAGMA optimize`).

Every run is recorded in `service_jobs` (last start, finish, outcome, message, count): what
`--once` reads to decide what is due and what `/v1/status` shows. A job's exception is
logged and recorded, never raised into the scheduler.

It does not schedule (`daemon/service/runner.py`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from apscheduler.triggers.cron import CronTrigger
from sqlalchemy import Engine, func, select, text

from daemon import adapters
from daemon.home import Home
from daemon.models import Cycle, ServiceJob
from daemon.service.spool import scan_spool
from daemon.settings import Settings
from replay.db import session_scope
from replay.models import Interaction, SynthRun, utcnow

log = logging.getLogger(__name__)

IDLE = "idle"
"""A job's message starting with this: it found nothing to do (logged at debug level)."""


@dataclass(frozen=True)
class JobSpec:
    """A job: its id, what it runs, and its schedule (an interval in seconds, or a cron
    expression; both empty: the job is off)."""

    id: str
    run: Callable[[], str]
    interval_s: float = 0.0
    cron: str = ""

    @property
    def enabled(self) -> bool:
        return self.interval_s > 0 or bool(self.cron)


def record_start(engine: Engine, name: str) -> None:
    with session_scope(engine) as s:
        row = s.get(ServiceJob, name)
        if row is None:
            row = ServiceJob(name=name, runs=0)
            s.add(row)
        row.last_started = utcnow()
        row.runs = (row.runs or 0) + 1


def record_end(engine: Engine, name: str, outcome: str, message: str) -> None:
    with session_scope(engine) as s:
        row = s.get(ServiceJob, name)
        if row is not None:
            row.last_finished = utcnow()
            row.last_outcome = outcome
            row.last_message = message[:2000]


def run_recorded(engine: Engine, job: JobSpec) -> str:
    """Run a job, recording its start and end; an exception becomes outcome 'error'."""
    started = time.monotonic()
    record_start(engine, job.id)
    try:
        message = job.run()
    except Exception as exc:
        log.exception("job %s failed", job.id)
        message = f"{type(exc).__name__}: {exc}"
        record_end(engine, job.id, "error", message)
        return "error"
    idle = message.startswith(IDLE)
    log.log(
        logging.DEBUG if idle else logging.INFO,
        "job %s: %s (%.1f s)",
        job.id,
        message,
        time.monotonic() - started,
    )
    record_end(engine, job.id, "idle" if idle else "ok", message)
    return "ok"


def last_runs(engine: Engine) -> dict[str, dict[str, object]]:
    with session_scope(engine) as s:
        return {
            r.name: {
                "last_started": r.last_started.isoformat() if r.last_started else None,
                "last_finished": r.last_finished.isoformat() if r.last_finished else None,
                "last_outcome": r.last_outcome,
                "last_message": r.last_message,
                "runs": r.runs,
            }
            for r in s.execute(select(ServiceJob)).scalars()
        }


def is_due(engine: Engine, job: JobSpec, now: datetime | None = None) -> bool:
    """Whether `--once` should run `job` now: never run, or its interval has passed since
    its last start, or its cron schedule fired since then."""
    if not job.enabled:
        return False
    now = now or utcnow()
    with session_scope(engine) as s:
        row = s.get(ServiceJob, job.id)
        last = row.last_started if row is not None else None
    if last is None:
        return True
    if job.interval_s > 0 and now - last >= timedelta(seconds=job.interval_s):
        return True
    if job.cron:
        trigger = CronTrigger.from_crontab(job.cron, timezone="UTC")
        fire = trigger.get_next_fire_time(None, last)
        return fire is not None and fire <= now
    return False


# ------------------------------------------------------------------------- the jobs


def unfinished_cycle(engine: Engine) -> int | None:
    """The id of a cycle that a stop or crash left unfinished, if any."""
    from daemon.cycle import FINISHED

    with session_scope(engine) as s:
        return s.execute(
            select(Cycle.id).where(Cycle.state.not_in(FINISHED)).order_by(Cycle.id).limit(1)
        ).scalar()


def fresh_interactions(engine: Engine) -> int:
    """Interactions received since the newest cycle started (all of them before any)."""
    with session_scope(engine) as s:
        since = s.execute(select(func.max(Cycle.started_at))).scalar()
        query = select(func.count(Interaction.id))
        if since is not None:
            query = query.where(Interaction.received_at > since)
        return int(s.execute(query).scalar() or 0)


def cycle_wanted(engine: Engine, settings: Settings) -> str | None:
    """Why a cycle should run now without waiting for the cron schedule (None: no reason)."""
    if unfinished_cycle(engine) is not None:
        return "an unfinished cycle resumes"
    need = settings.service.cycle_min_fresh
    if need > 0:
        fresh = fresh_interactions(engine)
        if fresh >= need:
            return f"{fresh} fresh interactions (cycle_min_fresh {need})"
    return None


def synth_seed(engine: Engine) -> int:
    """The seed of the synth job's next run: the synthesis runs stored so far."""
    with session_scope(engine) as s:
        return int(s.execute(select(func.count(SynthRun.id))).scalar() or 0)


def make_jobs(
    engine: Engine,
    home: Home,
    settings: Settings,
    *,
    leading: Callable[[], bool],
) -> list[JobSpec]:
    """The service's jobs for these settings. Jobs that use the model, train or change
    adapters run only while `leading()`; the spool and upkeep run on every process."""
    svc = settings.service

    def spool() -> str:
        scan = scan_spool(engine, home.root / svc.spool_dir, home.quarantine, settings.ingest)
        if not scan.done and not scan.failed:
            return f"{IDLE}: the spool is empty"
        return f"{len(scan.done)} done, {len(scan.failed)} failed, {scan.ingested} stored"

    def synth() -> str:
        if not leading():
            return f"{IDLE}: not the leader"
        pending = unfinished_cycle(engine)
        if pending is not None:
            return f"skipped: cycle {pending} is unfinished (it resumes first)"
        from daemon.synth_run import run_synth

        summary = run_synth(engine, home, settings, seed=synth_seed(engine))
        return (
            f"synthesis run {summary.run_id} ({summary.adapter}): {summary.candidates} "
            f"candidates, {summary.sft_new} SFT examples, {summary.pairs_new} pairs"
        )

    def cycle(reason: str = "schedule") -> str:
        if not leading():
            return f"{IDLE}: not the leader"
        from daemon.cycle import run_cycle

        summary = run_cycle(engine, home, settings, say=lambda line: log.info("%s", line))
        return (
            f"cycle {summary.cycle_id} ({reason}): {summary.state}, "
            f"{summary.stage or '-'}, {summary.outcome or '-'}"
        )

    def cycle_check() -> str:
        reason = cycle_wanted(engine, settings)
        return cycle(reason) if reason else f"{IDLE}: no cycle wanted"

    def snapshot() -> str:
        from daemon.report import write_drift_report

        html, _json = write_drift_report(engine, home, home.reports)
        return f"drift report {html}"

    def retention() -> str:
        if not leading():
            return "skipped: not the leader"
        deleted = adapters.prune(engine, home.adapters, settings.adapters.keep_last)
        return f"{len(deleted)} adapter versions deleted"

    def upkeep() -> str:
        with engine.begin() as conn:
            if engine.dialect.name == "sqlite":
                conn.execute(text("PRAGMA optimize"))
            conn.execute(text("ANALYZE"))
        return "statistics refreshed"

    return [
        JobSpec("spool", spool, interval_s=svc.spool_interval_s),
        JobSpec("synth", synth, cron=svc.synth_cron),
        JobSpec("cycle", cycle, cron=svc.cycle_cron),
        JobSpec("cycle-check", cycle_check, interval_s=svc.cycle_check_interval_s),
        JobSpec("snapshot", snapshot, interval_s=svc.snapshot_interval_s),
        JobSpec("retention", retention, interval_s=svc.retention_interval_s),
        JobSpec("upkeep", upkeep, interval_s=svc.upkeep_interval_s),
    ]
