"""What a local pool daemon's process runs first (`python daemon_exec.py PORT WAIT_S COMMAND...`):
ignore hang-ups as `nohup` does, wait for something to listen on PORT (the Spark master) for at
most WAIT_S seconds when PORT is not empty, then become COMMAND (exec: the same pid, which the pool
has already recorded). No shell: COMMAND is an argument vector, passed on as it is.

Run as a script by its path, not as a module: it imports nothing but the standard library, so it
starts in a few tens of milliseconds, and it runs after the caller has already returned."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time


def _listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:PORT (also the local pool's check of its master port)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def main(argv: list[str]) -> int:
    if len(argv) < 4:
        print("usage: daemon_exec.py PORT WAIT_S COMMAND...", file=sys.stderr)
        return 2
    port, wait_s, command = argv[1], float(argv[2]), argv[3:]
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # kept across exec: the JVM ignores hang-ups too
    if port:
        deadline = time.monotonic() + wait_s
        while not _listening(int(port)):
            if time.monotonic() >= deadline:
                print(f"dpe: nothing listened on port {port} (the Spark master) within {wait_s:g}s; not starting",
                      flush=True)
                return 1
            time.sleep(0.1)
    os.execv(command[0], command)
    return 127  # not reached: execv replaces this process or raises


if __name__ == "__main__":
    sys.exit(main(sys.argv))
