"""Run the world's pretraining in a fresh interpreter with pinned CPU numerics.

The same seed and settings trained different weights on different machines: torch picks its
CPU kernels by the processor (AVX-512 where there is one, else AVX2) and MKL its code path
by vendor and instruction set, and each rounds differently. So `train_in_child` runs the
training (`world.pretrain.train_here`) in a new Python process whose environment pins them:
ATen's kernels at AVX2 (`ATEN_CPU_CAPABILITY`), MKL in its conditional-numerical-
reproducibility mode at AVX2 (`MKL_CBWR`) and oneDNN capped at AVX2 (`ONEDNN_MAX_CPU_ISA`),
with the requested number of threads. Any x86-64 machine with AVX2 then computes the same
bits. A new process also keeps out whatever the calling one changed (torch's threads or
default dtype, libraries it loaded, an `LD_PRELOAD` a library set for its own children).

The settings travel to the child as a pickle in a private temporary folder that this
module writes itself; the child writes the model into the target folder and what it did to
`result.json` there. This module does not decide where a model comes from (cached, shipped
or trained: `world.pretrain`) and does not make the bits equal on other processor families
(Arm) or other torch builds.

KNOWN BUG (found 2026-12-04): on an Intel Xeon with AMX (Sapphire Rapids) the pinned
training computes other bits than on the AVX2-only and AVX-512 machines that made and
rebuilt the base shipped then (`8a52238f...` against `ab34344b...`): the first step's loss
already differs in its last bit. (The base shipped since 2026-12-05 was built on an
AVX-512 machine without AMX.) Pinning MKL at `COMPATIBLE` or ATen at `default` makes
that first loss equal but not the steps after. The cause is not found yet.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stages.atomic import write_atomic

if TYPE_CHECKING:
    from world.pretrain import BootstrapResult, BootstrapSettings

NUMERIC_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
"""What the child's environment pins (recorded in the model's manifest)."""
_DROPPED = ("LD_PRELOAD",)
SETTINGS_FILE = "settings.pickle"
RESULT_FILE = "result.json"


class BootstrapProcessError(RuntimeError):
    """The training process failed; its own output (inherited stderr) says why."""


def child_env(threads: int | None) -> dict[str, str]:
    """The child's environment: ours with the numerics pinned and `threads` set."""
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED}
    env.update(NUMERIC_ENV)
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def train_in_child(
    settings: BootstrapSettings, target: Path, threads: int | None
) -> tuple[BootstrapResult, dict[str, Any]]:
    """Train `settings` into the (existing, empty) folder `target` in a fresh process; return
    what it did and the numeric environment it ran in."""
    from world.pretrain import BootstrapResult

    with tempfile.TemporaryDirectory(prefix="tutord-bootstrap-job-") as scratch:
        job = Path(scratch)
        write_atomic(job / SETTINGS_FILE, pickle.dumps((settings, threads)))
        command = [sys.executable, "-m", "world.pretrain_process", str(job), str(target)]
        done = subprocess.run(command, env=child_env(threads), check=False)
        if done.returncode != 0:
            raise BootstrapProcessError(
                f"the pretraining process exited with {done.returncode} (its output is above)"
            )
        report = json.loads((job / RESULT_FILE).read_text())
    return BootstrapResult(**report["result"]), report["numerics"]


def main(argv: list[str]) -> int:
    """Child entry point: `python -m world.pretrain_process JOB_DIR TARGET_DIR`."""
    import torch

    from world.pretrain import train_here

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    job, target = Path(argv[0]), Path(argv[1])
    settings, threads = pickle.loads((job / SETTINGS_FILE).read_bytes())
    if threads is not None:
        torch.set_num_threads(threads)
    result = train_here(settings, target)
    numerics = {
        **NUMERIC_ENV,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    payload = {"result": result.to_dict(), "numerics": numerics}
    write_atomic(job / RESULT_FILE, json.dumps(payload).encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
