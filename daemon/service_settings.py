"""The `[service]` table of tutord's settings: what `tutord run` schedules (spool scans,
cycles, synthesis, snapshots, retention, upkeep), its leadership lease, stopping and the
HTTP API. Crontab expressions are checked when the settings load. It only declares and
validates; `daemon/service/` runs the service, and `daemon/settings.py` holds the rest.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ServiceSettings(BaseModel):
    """`tutord run`: the long-running service's jobs, leadership and HTTP API."""

    model_config = ConfigDict(extra="forbid")

    spool_dir: str = Field(
        "spool",
        description=(
            "Folder watched for log files to ingest (relative to the home); each file is "
            "moved to done/ or failed/ (with its errors) beside it. Write a file under a "
            "name starting with '.' and rename it when complete."
        ),
    )
    spool_interval_s: float = Field(5.0, gt=0, description="Seconds between spool scans.")
    cycle_cron: str = Field(
        "",
        description="Crontab expression (5 fields, UTC) for cycles, e.g. '0 3 * * *'.",
    )
    synth_cron: str = Field(
        "",
        description=(
            "Crontab expression (5 fields, UTC) for synthesis runs between cycles, as "
            "`tutord synth` (empty: none; every cycle synthesizes first anyway). Skipped "
            "while a cycle runs or is unfinished."
        ),
    )
    cycle_min_fresh: int = Field(
        0,
        ge=0,
        description=(
            "Run a cycle as soon as this many interactions arrived since the last cycle "
            "started (0: only on cycle_cron)."
        ),
    )
    cycle_check_interval_s: float = Field(
        60.0, gt=0, description="Seconds between checks of cycle_min_fresh."
    )
    snapshot_interval_s: float = Field(
        0.0, ge=0, description="Seconds between drift report rebuilds (0: off)."
    )
    retention_interval_s: float = Field(
        86400.0,
        ge=0,
        description="Seconds between adapter retention runs (adapters.keep_last; 0: off).",
    )
    upkeep_interval_s: float = Field(
        86400.0, ge=0, description="Seconds between database upkeep runs (0: off)."
    )
    lease_ttl_s: float = Field(
        60.0,
        ge=3,
        description=(
            "Leadership lease on a shared database: renewed every third of this; a "
            "follower takes over within it when the leader dies."
        ),
    )
    stop_timeout_s: float = Field(
        60.0,
        gt=0,
        description=(
            "After SIGTERM, how long a running stage gets to stop before its process group "
            "is killed (keep it below the unit's TimeoutStopSec)."
        ),
    )
    log_format: Literal["text", "json"] = Field("text", description="Log lines on stderr.")
    http_enabled: bool = Field(False, description="Serve the HTTP API (needs a token).")
    http_host: str = Field("127.0.0.1", description="Address the HTTP API listens on.")
    http_port: int = Field(8377, ge=0, le=65535, description="Port of the HTTP API.")
    api_token: str = Field(
        "", description="Bearer token every route but /healthz requires (or api_token_file)."
    )
    api_token_file: str = Field(
        "", description="A file holding the bearer token (relative to the home)."
    )

    @field_validator("cycle_cron", "synth_cron")
    @classmethod
    def _crontab(cls, value: str) -> str:
        """A schedule the scheduler will take (checked here, so a bad one is refused when
        the settings load, naming the key, not when the service schedules it)."""
        if value.strip():
            from apscheduler.triggers.cron import CronTrigger

            CronTrigger.from_crontab(value, timezone="UTC")  # ValueError says what is wrong
        return value
