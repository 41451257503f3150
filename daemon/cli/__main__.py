"""`python -m daemon.cli ...`: the same command line as the `tutord` script."""

from __future__ import annotations

from daemon.cli import app

app()
