"""For tests that run whole cycles in a real home through `tutord` subprocesses: the small
settings that keep a cycle fast on a CPU, and promoting an adapter directly (no cycle, no
gate)."""

from __future__ import annotations

from pathlib import Path

from daemon import adapters
from replay.db import make_engine, session_scope
from stages import registry

FAST: dict[str, str] = {
    "TUTORD_SYNTH__PROMPTS": "6",
    "TUTORD_SYNTH__N": "2",
    "TUTORD_SYNTH__MAX_NEW_TOKENS": "8",
    "TUTORD_JUDGE__MAX_NEW_TOKENS": "6",
    "TUTORD_TRAIN__SFT__MAX_STEPS": "2",
    "TUTORD_TRAIN__SFT__PER_DEVICE_BATCH_SIZE": "4",
    "TUTORD_GATE__MAX_ITEMS": "8",
    "OMP_NUM_THREADS": "1",
}
"""Environment for `run_tutord`: few prompts, short generations, two SFT steps, a small gate."""


def promote(home: Path, manifest: registry.Manifest, reason: str) -> None:
    """Register the published adapter `manifest` in the home's database and make it
    production through the API, as the test's own decision."""
    engine = make_engine(f"sqlite:///{home / 'tutord.db'}")
    with session_scope(engine) as s:
        adapters.register(s, manifest)
    adapters.move_production(
        engine,
        manifest.version,
        kind="promote",
        actor="test",
        reason=reason,
        adapters_dir=home / "adapters",
    )
    engine.dispose()
