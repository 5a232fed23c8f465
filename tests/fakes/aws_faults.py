"""An AWS fault injector at the HTTP level: a proxy between boto3 and an AWS API (moto's server on
loopback) that answers a configurable share of requests with AWS-format errors, delays, or a
dropped connection, and counts what it did.

Faults, each drawn independently per request with its rate (`FaultRates`):

- `500`: `InternalFailure` (HTTP 500), `503`: `ServiceUnavailable` (HTTP 503),
  `throttle`: `Throttling` (HTTP 400, "Rate exceeded"): the errors botocore's retry modes retry;
- `dropped`: the connection is closed without an answer, before the request reaches the server
  (botocore sees a connection error and retries), so a dropped call never acts twice;
- `latency`: the request is forwarded after `latency_s` more.

Besides rates, tests can queue exact faults per API action (`faults`, `persistent`), and every
forwarded mutating call is kept in `actions` (action, group, parameters, time), so a test can tell
whether one scale decision reached AWS twice. Where the emulator lacks an API (moto has no
CompleteLifecycleAction), `stand_ins` answers it with AWS's empty success and records it in
`actions` too: the call's parameters are what a test can check, not its effect. Counts are in `injected` (per kind) and `seen` (per
action). Only for tests and benchmarks; the proxy listens on 127.0.0.1 only.

    python -m tests.fakes.aws_faults --upstream http://127.0.0.1:5000 --rate 0.2
"""

from __future__ import annotations

import argparse
import http.client
import random
import threading
import time
import urllib.parse
import uuid
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

KINDS = ("500", "503", "throttle", "latency", "dropped")
# AWS calls that change something: each is kept in `FaultInjector.actions` when it reaches the server.
MUTATING = ("SetDesiredCapacity", "TerminateInstanceInAutoScalingGroup", "SetInstanceProtection",
            "CreateOrUpdateTags", "DeleteTags", "TerminateInstances", "RunInstances", "SuspendProcesses",
            "CompleteLifecycleAction")
# Everything this process's injectors did, summed (the reliability suite's summary reads it).
TOTALS: Counter = Counter()
_TOTALS_LOCK = threading.Lock()


@dataclass(frozen=True)
class FaultRates:
    """Probability per request of each fault (errors and drops exclude each other)."""

    error_500: float = 0.0
    error_503: float = 0.0
    throttle: float = 0.0
    dropped: float = 0.0
    latency: float = 0.0
    latency_s: float = 0.2

    def __post_init__(self):
        failing = self.error_500 + self.error_503 + self.throttle + self.dropped
        for name in ("error_500", "error_503", "throttle", "dropped", "latency"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"fault rate {name}: must be between 0 and 1; got {value!r}")
        if failing > 1.0:
            raise ValueError(f"fault rates: 500 + 503 + throttle + dropped must be at most 1; got {failing:g}")
        if self.latency_s < 0:
            raise ValueError(f"latency_s: must be >= 0; got {self.latency_s!r}")

    @classmethod
    def failing(cls, total: float, latency: float = 0.0, latency_s: float = 0.2) -> "FaultRates":
        """`total` split evenly over 500, 503, throttling and dropped connections."""
        share = total / 4
        return cls(share, share, share, share, latency, latency_s)


class FaultInjector:
    """Forwards to `upstream`; injects faults by rate or by queue. Start with `with` or `start()`."""

    THROTTLE = (400, "Sender", "Throttling", "Rate exceeded")
    UNAVAILABLE = (503, "Receiver", "ServiceUnavailable", "Service is unavailable")
    INTERNAL = (500, "Receiver", "InternalFailure", "An internal error occurred")
    DROP = "drop"
    _KIND = {THROTTLE: "throttle", UNAVAILABLE: "503", INTERNAL: "500", DROP: "dropped"}

    def __init__(self, upstream: str, rates: FaultRates | None = None, seed: int | None = None,
                 on_forward: Callable[[str, dict], None] | None = None):
        self.upstream = urllib.parse.urlparse(upstream)
        self.rates = rates or FaultRates()
        self.random = random.Random(seed)
        self.faults: dict[tuple[str, str | None], list] = {}
        self.persistent: dict[tuple[str, str | None], object] = {}
        self.seen: Counter = Counter()
        self.injected: Counter = Counter()
        self.actions: list[tuple[str, str | None, dict, float]] = []
        self.on_forward = on_forward  # called after a mutating call reached the server
        self.enabled = True  # rates apply only while enabled (queued faults always do)
        self.stand_ins: set[str] = set()  # actions answered here with an empty success (see the docstring)
        self._lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None
        self.url = ""

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> "FaultInjector":
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, name="fault-injector", daemon=True).start()
        return self

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def __enter__(self) -> "FaultInjector":
        return self.start() if self.server is None else self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- decisions ---------------------------------------------------------------------------
    def _count(self, kind: str) -> None:
        with self._lock:
            self.injected[kind] += 1
        with _TOTALS_LOCK:
            TOTALS[kind] += 1

    def _decide(self, action: str, group: str | None):
        """(fault or None, delay seconds) for one request."""
        with self._lock:
            self.seen[action] += 1
            for key in ((action, group), (action, None)):
                if key in self.persistent:
                    return self.persistent[key], 0.0
                if self.faults.get(key):
                    return self.faults[key].pop(0), 0.0
            if not self.enabled:
                return None, 0.0
            r = self.rates
            draw = self.random.random()
            fault = None
            for limit, chosen in ((r.error_500, self.INTERNAL), (r.error_503, self.UNAVAILABLE),
                                  (r.throttle, self.THROTTLE), (r.dropped, self.DROP)):
                if draw < limit:
                    fault = chosen
                    break
                draw -= limit
            delay = r.latency_s if fault is None and self.random.random() < r.latency else 0.0
        return fault, delay

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                form = urllib.parse.parse_qs(body.decode(errors="replace"))
                action = form.get("Action", ["?"])[0]
                group = form.get("AutoScalingGroupName", [None])[0]
                fault, delay = proxy._decide(action, group)
                if fault == proxy.DROP:
                    proxy._count("dropped")
                    self.close_connection = True
                    self.connection.shutdown(2)  # no answer at all: a reset/closed connection
                    return
                if fault:
                    proxy._count(proxy._KIND.get(fault, "500"))
                    status, kind, code, message = fault
                    payload = (f"<ErrorResponse><Error><Type>{kind}</Type><Code>{code}</Code><Message>{message}"
                               f"</Message></Error><RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>").encode()
                    self._answer(status, [("Content-Type", "text/xml")], payload)
                    return
                if action in proxy.stand_ins:
                    params = {k: v[0] for k, v in form.items() if k not in ("Action", "Version")}
                    with proxy._lock:
                        proxy.actions.append((action, group, params, time.time()))
                    payload = (f'<{action}Response xmlns="http://autoscaling.amazonaws.com/doc/2011-01-01/">'
                               f"<{action}Result/><ResponseMetadata><RequestId>{uuid.uuid4()}</RequestId>"
                               f"</ResponseMetadata></{action}Response>").encode()
                    self._answer(200, [("Content-Type", "text/xml")], payload)
                    return
                if delay:
                    proxy._count("latency")
                    time.sleep(delay)
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                    conn.request("POST", self.path, body=body, headers=headers)
                    response = conn.getresponse()
                    data = response.read()
                finally:
                    conn.close()
                if action in MUTATING and response.status < 300:
                    params = {k: v[0] for k, v in form.items() if k not in ("Action", "Version")}
                    with proxy._lock:
                        proxy.actions.append((action, group, params, time.time()))
                    if proxy.on_forward is not None:
                        proxy.on_forward(action, params)
                headers = [(k, v) for k, v in response.getheaders()
                           if k.lower() not in ("content-length", "connection", "transfer-encoding", "server", "date")]
                self._answer(response.status, headers, data)

            def _answer(self, status, headers, payload):
                self.send_response(status)
                for key, value in headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        return Handler


class FaultProxy(FaultInjector):
    """A `FaultInjector` with no rates, started at once (the AWS provider's tests queue exact faults)."""

    def __init__(self, upstream: str, **kwargs):
        super().__init__(upstream, **kwargs)
        self.start()


def _main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="AWS fault injector: an HTTP proxy on 127.0.0.1")
    parser.add_argument("--upstream", required=True, help="the AWS API to forward to, e.g. http://127.0.0.1:5000")
    parser.add_argument("--rate", type=float, default=0.2, help="share of requests that fail (500/503/throttle/drop)")
    parser.add_argument("--latency", type=float, default=0.1, help="share of requests delayed")
    parser.add_argument("--latency-s", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    with FaultInjector(args.upstream, FaultRates.failing(args.rate, args.latency, args.latency_s), args.seed) as proxy:
        print(f"fault injector on {proxy.url} -> {args.upstream}", flush=True)
        try:
            while True:
                time.sleep(10)
                print("injected: " + " ".join(f"{k}={proxy.injected[k]}" for k in KINDS), flush=True)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    _main()
