"""A pure-Python ``sd_notify``: READY, STATUS, WATCHDOG and STOPPING for ``Type=notify``.

The protocol is one datagram of newline-separated ``KEY=VALUE`` lines sent to the AF_UNIX socket
named by ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace), so libsystemd is not
needed. Outside systemd (no ``$NOTIFY_SOCKET``) every call is a no-op, so the daemon calls it
unconditionally.

Sending never raises and never blocks: the socket is non-blocking, and a failed send (manager
gone, queue full) is reported as ``False``. A missed WATCHDOG ping costs at worst a restart, while
an exception here would take the daemon down with it.

The watchdog must be pinged from the event loop itself (a thread would keep pinging while the loop
is stuck, defeating the point), at half of :meth:`Notifier.watchdog_interval_s` as sd_notify(3)
recommends.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Awaitable, Callable, Mapping

__all__ = ["Notifier", "watchdog_pinger"]


class Notifier:
    """Talks to the service manager through ``$NOTIFY_SOCKET``; inert when there is none."""

    def __init__(self, address: str | None, *, watchdog_usec: int | None = None) -> None:
        self._address: str | None = None
        if address:
            # "@name" is Linux's abstract namespace: a leading NUL byte on the wire.
            self._address = "\0" + address[1:] if address.startswith("@") else address
        self._watchdog_usec = watchdog_usec

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Notifier:
        """From ``$NOTIFY_SOCKET`` and ``$WATCHDOG_USEC`` (honouring ``$WATCHDOG_PID``)."""
        usec: int | None = None
        try:
            usec = int(env.get("WATCHDOG_USEC", ""))
            pid = env.get("WATCHDOG_PID")
            if usec <= 0 or (pid and int(pid) != os.getpid()):
                usec = None  # the watchdog is meant for another process (we were forked/exec'd)
        except ValueError:
            usec = None
        return cls(env.get("NOTIFY_SOCKET"), watchdog_usec=usec)

    @property
    def enabled(self) -> bool:
        """Whether a service manager is listening."""
        return self._address is not None

    def watchdog_interval_s(self) -> float | None:
        """``WatchdogSec=`` in seconds, or None when no watchdog applies; ping at half of it."""
        return None if self._watchdog_usec is None else self._watchdog_usec / 1e6

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` assignments in one datagram; False if not sent."""
        if self._address is None:
            return False
        # A fresh socket per message, like sd_notify(3): nothing to leak or to close, and a
        # restarted manager is reached without reconnect logic. A few messages a minute.
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)
                sock.sendto("\n".join(assignments).encode("utf-8", "replace"), self._address)
        except OSError:
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Startup finished (``READY=1``), optionally with a status line."""
        return self.notify("READY=1", *([] if status is None else [_status(status)]))

    def status(self, text: str) -> bool:
        """Free-form status shown by ``systemctl status``."""
        return self.notify(_status(text))

    def watchdog(self) -> bool:
        """Keep-alive ping (``WATCHDOG=1``)."""
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown has begun (``STOPPING=1``)."""
        return self.notify("STOPPING=1", *([] if status is None else [_status(status)]))

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for more time to start or stop (``EXTEND_TIMEOUT_USEC``)."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={max(0, int(seconds * 1e6))}")


def _status(text: str) -> str:
    # One assignment per line: a newline inside the text would start a bogus assignment.
    return "STATUS=" + " ".join(text.splitlines())


async def watchdog_pinger(
    notifier: Notifier, *, sleep: Callable[[float], Awaitable[None]] | None = None
) -> None:
    """Send ``WATCHDOG=1`` at half the watchdog interval until cancelled.

    Run it as a task on the daemon's event loop: if the loop stalls, the pings stop and systemd
    restarts the service, which is the point. Returns at once when no watchdog applies.

    Args:
        notifier: where to send.
        sleep: ``asyncio.sleep`` unless injected (tests).
    """
    interval = notifier.watchdog_interval_s()
    if interval is None:
        return
    if sleep is None:
        import asyncio

        sleep = asyncio.sleep
    while True:
        notifier.watchdog()
        await sleep(interval / 2)
