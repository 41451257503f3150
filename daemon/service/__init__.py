"""tutord run: the long-running service (scheduler, spool, leadership, HTTP API)."""

from __future__ import annotations
