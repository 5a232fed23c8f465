"""What keeps in step with the cluster from a thread (tests/cluster/eks.py's nodes, the stand-in
kubelet): `sync()` every `interval_s` from `start()` (or `with`) to `stop()`; a pass that fails is
kept in `errors` for the test to see, and the next one runs."""

from __future__ import annotations

import logging
import threading

log = logging.getLogger("tests.cluster")


class Background:
    name = "background"

    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def sync(self) -> None:
        raise NotImplementedError

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync()
            except Exception as error:  # noqa: BLE001 - kept for the test to see; the loop goes on
                self.errors.append(f"{type(error).__name__}: {error}")
                log.warning("%s: %s", self.name, error)
            self._stop.wait(self.interval_s)

    def _run(self, target, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def start(self):
        self._run(self._loop, self.name)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
