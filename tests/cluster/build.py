"""Build the test cluster's binaries from the Go modules pinned here, once, into a cache outside the clone.

    python -m tests.cluster.build          # build (or reuse) and print the folder
    python -m tests.cluster.build --check  # exit 0 when built, 1 when not, 3 when Go is missing

What is built: kube-apiserver, kube-controller-manager and kube-scheduler from `k8s.io/kubernetes`
and etcd from `go.etcd.io/etcd/server/v3` (module `k8s/`), kwok from `sigs.k8s.io/kwok` (module
`kwok/`), with `CGO_ENABLED=0` and `-mod=readonly` (go.mod and go.sum are the truth; a build never
edits them). The cache folder is `$DPE_CLUSTER_CACHE`, else `$XDG_CACHE_HOME/dpe-cluster`, else
`~/.cache/dpe-cluster`, and inside it one folder per key: a hash of both modules' go.mod and go.sum,
the Go version and the platform. A machine that built them reuses them; a version change builds
anew beside the old. How long a cold build takes is in the README ("Two commands"); Go's own module
and build caches make a rebuild after a small version change faster.

Nothing is built from the module `capi/`: it pins `sigs.k8s.io/cluster-api`, whose CRDs the tests
read from Go's module cache (`module_source`; tests/cluster/cluster_api.py).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
# (module folder, Go packages, binary names they produce)
MODULES = (
    ("k8s", ("k8s.io/kubernetes/cmd/kube-apiserver", "k8s.io/kubernetes/cmd/kube-controller-manager",
             "k8s.io/kubernetes/cmd/kube-scheduler", "go.etcd.io/etcd/server/v3"),
     ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd")),
    ("kwok", ("sigs.k8s.io/kwok/cmd/kwok",), ("kwok",)),
)
# etcd's main package is its module root: go names the binary "server".
_OUTPUT_NAMES = {"go.etcd.io/etcd/server/v3": "server"}
BINARIES = tuple(name for _, _, names in MODULES for name in names)


class GoMissing(RuntimeError):
    pass


@dataclass(frozen=True)
class Binaries:
    folder: Path

    def path(self, name: str) -> Path:
        return self.folder / name

    def complete(self) -> bool:
        return all(os.access(self.path(name), os.X_OK) for name in BINARIES)


def go() -> str:
    path = shutil.which("go")
    if path is None:
        raise GoMissing("the test cluster is built from Go modules, and no `go` is on PATH (Go 1.26 or newer: "
                        "https://go.dev/dl/)")
    return path


def cache_root() -> Path:
    if os.environ.get("DPE_CLUSTER_CACHE"):
        return Path(os.environ["DPE_CLUSTER_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dpe-cluster"


def cache_key() -> str:
    digest = hashlib.sha256()
    for folder, packages, _ in MODULES:
        for name in ("go.mod", "go.sum"):
            digest.update(f"{folder}/{name}\0".encode())
            digest.update((HERE / folder / name).read_bytes())
        digest.update("\0".join(packages).encode())
    version = subprocess.run([go(), "env", "GOVERSION", "GOOS", "GOARCH"], capture_output=True, text=True,
                             check=True).stdout.split()
    digest.update(" ".join(version).encode())
    return f"{version[0]}-{digest.hexdigest()[:16]}"


def binaries() -> Binaries:
    return Binaries(cache_root() / cache_key() / "bin")


def _go_env() -> dict[str, str]:
    return {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=readonly -trimpath -buildvcs=false",
            "GOWORK": "off"}


def module_source(folder: str, module: str) -> Path:
    """The folder of Go's module cache that holds `module` at the version tests/cluster/<folder>/go.mod
    pins (downloaded through the module proxy, and checked against its go.sum, the first time)."""
    listed = subprocess.run([go(), "mod", "download", "-json", module], cwd=HERE / folder, env=_go_env(),
                            capture_output=True, text=True)
    found = json.loads(listed.stdout or "{}")
    if listed.returncode != 0 or not found.get("Dir"):
        raise RuntimeError(f"go mod download {module} in tests/cluster/{folder} failed: "
                           f"{found.get('Error') or listed.stderr[-2000:]}")
    return Path(found["Dir"])


def _build_module(folder: str, packages: tuple[str, ...], out: Path, progress) -> None:
    module = HERE / folder
    listed = subprocess.run([go(), "list", "-deps", *packages], cwd=module, env=_go_env(), capture_output=True,
                            text=True)
    if listed.returncode != 0:
        raise RuntimeError(f"go list in tests/cluster/{folder} failed (a module the proxy refuses names itself "
                           f"here):\n{listed.stderr[-4000:]}")
    total = max(1, len(listed.stdout.split()))
    process = subprocess.Popen([go(), "build", "-v", "-o", f"{out}/", *packages], cwd=module, env=_go_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    done, tail = 0, []
    assert process.stdout is not None
    for line in process.stdout:
        tail = (tail + [line])[-40:]
        done += 1
        progress(folder, min(done, total), total)
    if process.wait() != 0:
        raise RuntimeError(f"go build in tests/cluster/{folder} failed:\n{''.join(tail)}")
    for package in packages:
        produced = _OUTPUT_NAMES.get(package)
        if produced:
            (out / produced).rename(out / "etcd")


def build(quiet: bool = False) -> Binaries:
    """The binaries, built now if this machine has not built them for these versions."""
    target = binaries()
    if target.complete():
        return target
    target.folder.parent.mkdir(parents=True, exist_ok=True)
    with open(target.folder.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same key
        if target.complete():
            return target
        staging = target.folder.parent / f"bin.partial-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        start = time.monotonic()
        last = [0.0]

        def progress(folder: str, done: int, total: int) -> None:
            if quiet or (time.monotonic() - last[0] < 5 and done < total):
                return
            last[0] = time.monotonic()
            print(f"  building the test cluster ({folder}): {done}/{total} packages, "
                  f"{time.monotonic() - start:.0f}s", file=sys.stderr, flush=True)

        if not quiet:
            print(f"building the test cluster's binaries into {target.folder} (once per version; about 7 minutes "
                  "cold on 2 cores)", file=sys.stderr, flush=True)
        for folder, packages, _ in MODULES:
            _build_module(folder, packages, staging, progress)
        shutil.rmtree(target.folder, ignore_errors=True)
        staging.rename(target.folder)
        (target.folder.parent / "build-seconds").write_text(f"{time.monotonic() - start:.0f}\n")
        if not quiet:
            print(f"built in {time.monotonic() - start:.0f}s: {', '.join(BINARIES)}", file=sys.stderr, flush=True)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build (or reuse) the test cluster's binaries.")
    parser.add_argument("--check", action="store_true", help="only say whether they are built (exit 0) or not (1)")
    args = parser.parse_args(argv)
    try:
        if args.check:
            found = binaries()
            print(found.folder)
            return 0 if found.complete() else 1
        print(build().folder)
        return 0
    except GoMissing as error:
        print(f"skipped: {error}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
