"""The systemd notify protocol: one datagram per message to `$NOTIFY_SOCKET`.

`Notifier` sends READY=1, STATUS=..., WATCHDOG=1 and STOPPING=1 (see sd_notify(3)); with no
`$NOTIFY_SOCKET` (not started by systemd) every call does nothing. `watchdog_interval()`
reads `$WATCHDOG_USEC` and returns how often to ping (half the timeout), or None when the
unit has no watchdog. An abstract socket (a name starting with '@') is supported.

It does not decide when the service is ready or healthy: the runner does.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    """Sends sd_notify messages to the socket systemd gave this process (if any)."""

    def __init__(self, address: str | None = None) -> None:
        self.address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *lines: str) -> bool:
        """Send one datagram of `KEY=VALUE` lines; False when not under systemd or it failed."""
        if not self.address:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(target)
                sock.sendall("\n".join(lines).encode())
        except OSError as exc:
            log.warning("sd_notify to %s failed: %s", self.address, exc)
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self, status: str = "") -> bool:
        return self.send("STOPPING=1", *([f"STATUS={status}"] if status else []))


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings: half of `$WATCHDOG_USEC` (None: no watchdog, or it
    is meant for another process per `$WATCHDOG_PID`)."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 2_000_000
