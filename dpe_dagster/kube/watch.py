"""The cluster's active pods and its nodes, kept in memory by one list and then a watch, as an
informer keeps them (dagster-k8s, the scheduler and every controller read the cluster so): a
tick's busy detection reads this cache instead of listing every pod and node again. One list of a
large cluster's pods costs seconds (bench/RESULTS.md, "Kubernetes at scale (issue 21)"); the watch
then costs one small event per change.

One watch per kind and API server per process (the code server's sensors, the daemon's launcher), started
on first use; until its first list arrives, readers list for themselves. A watch that breaks (the server
restarts, the resource version is too old: 410 Gone) lists again. What it holds can trail the API
by the time an event takes to arrive: what decides a removal is read afresh, node by node
(`KubeNodes.busy_by_instance(fresh=True)`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any, Callable

log = logging.getLogger("dpe.kube.watch")

# A watch request ends after this and is made again from where it stopped (the API server ends
# watches after a while itself).
WATCH_TIMEOUT_S = 300
# A watch nobody has read for this long stops (a process that no longer looks at that cluster).
IDLE_S = 600.0
# Between tries while the API does not answer: doubling from the first, up to the last.
RETRY_S = (1.0, 30.0)


def _slim(pod: dict) -> dict:
    """An object without what dpe never reads and the API repeats in every object (managedFields)."""
    metadata = pod.get("metadata") or {}
    if "managedFields" in metadata:
        pod = {**pod, "metadata": {k: v for k, v in metadata.items() if k != "managedFields"}}
    return pod


class Watch:
    """The objects a list call returns (`list_call`: the client's list method, e.g.
    `list_pod_for_all_namespaces`, with its selectors), by uid, kept up to date from the API."""

    def __init__(self, list_call: Callable[..., Any], field_selector: str | None, label_selector: str | None):
        self.list_call = list_call
        self.field_selector = field_selector
        self.label_selector = label_selector
        self._objects: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._synced = threading.Event()
        self._stop = threading.Event()
        self._read_at = time.monotonic()
        self.lists = 0  # how many full lists it made (1 while the watch holds)
        self._thread = threading.Thread(target=self._run, name="dpe-watch", daemon=True)
        self._thread.start()

    # -- reading --------------------------------------------------------------------------------
    def items(self, list_now: Callable[[], list[dict]]) -> list[dict]:
        """The cached objects; `list_now()` while the watch has not listed yet (its first list, or
        an API that does not answer: the caller's own call then fails as it should)."""
        self._read_at = time.monotonic()
        if not self._synced.is_set():
            return list_now()
        with self._lock:
            return list(self._objects.values())

    def stop(self) -> None:
        self._stop.set()

    # -- keeping up -----------------------------------------------------------------------------
    def _params(self) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if self.field_selector:
            params["field_selector"] = self.field_selector
        if self.label_selector:
            params["label_selector"] = self.label_selector
        return params

    def _list(self) -> str:
        response = self.list_call(_preload_content=False, **self._params())
        body = json.loads(response.data)
        pods = {(p.get("metadata") or {}).get("uid"): _slim(p) for p in body.get("items") or []}
        with self._lock:
            self._objects = pods
        self.lists += 1
        self._synced.set()
        return (body.get("metadata") or {}).get("resourceVersion", "")

    def _watch(self, version: str) -> str | None:
        """Apply the watch's events until it ends; the version to go on from, or None to list again."""
        response = self.list_call(
            watch=True, resource_version=version, allow_watch_bookmarks=True, timeout_seconds=WATCH_TIMEOUT_S,
            _preload_content=False, _request_timeout=WATCH_TIMEOUT_S + 30, **self._params())
        buffer = b""
        try:
            for chunk in response.stream(65536, decode_content=True):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    kind, pod = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":  # 410 Gone: too old to go on from; list again
                        return None
                    version = (pod.get("metadata") or {}).get("resourceVersion", version)
                    if kind == "BOOKMARK":
                        continue
                    uid = (pod.get("metadata") or {}).get("uid")  # a pod, or a node
                    with self._lock:
                        if kind == "DELETED":  # deleted, or no longer matching (finished)
                            self._objects.pop(uid, None)
                        else:
                            self._objects[uid] = _slim(pod)
                    if self._stop.is_set():
                        return None
        finally:
            response.release_conn()
        return version

    def _run(self) -> None:
        version: str | None = None
        pause = RETRY_S[0]
        while not self._stop.is_set() and time.monotonic() - self._read_at < IDLE_S:
            try:
                if version is None:
                    version = self._list()
                    pause = RETRY_S[0]
                version = self._watch(version)
            except Exception as error:  # noqa: BLE001 - the API may be away for a while; try again
                if self._stop.is_set():
                    break  # stopped: the API going away is expected
                log.warning("watch of %s: %s; listing again in %.0fs", getattr(self.list_call, "__name__", "objects"),
                            error, pause)
                self._synced.clear()  # readers list for themselves meanwhile (and fail as they should)
                version = None
                self._stop.wait(pause)
                pause = min(pause * 2, RETRY_S[1])
        _forget(self)


_WATCHES: dict[tuple[str, str, str | None, str | None], Watch] = {}
_WATCHES_LOCK = threading.Lock()


def watch(host: str, list_call: Callable[..., Any], field_selector: str | None = None,
          label_selector: str | None = None) -> Watch:
    """The process's watch of these objects on this API server (started on first use)."""
    key = (host, list_call.__name__, field_selector, label_selector)
    with _WATCHES_LOCK:
        found = _WATCHES.get(key)
        if found is None:
            found = _WATCHES[key] = Watch(list_call, field_selector, label_selector)
        return found


def _forget(stopped: Watch) -> None:
    with _WATCHES_LOCK:
        for key in [key for key, found in _WATCHES.items() if found is stopped]:
            del _WATCHES[key]


def stop_watches() -> None:
    """Stop every watch of this process (a process about to end, a test's cluster going away)."""
    with _WATCHES_LOCK:
        for watch in _WATCHES.values():
            watch.stop()
        _WATCHES.clear()
