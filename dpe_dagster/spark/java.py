"""The Java and Spark process environment shared by the local pool and the Spark resource, and
which live Spark processes are dpe's."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

JAVA_HINT = (
    "Spark needs Java 17 or newer. On Debian/Ubuntu: `sudo apt-get install -y openjdk-17-jre-headless`; "
    "on macOS: `brew install openjdk@17`; or set JAVA_HOME to a JDK 17+."
)


class JavaMissing(RuntimeError):
    pass


def java_home() -> Path:
    if os.environ.get("JAVA_HOME"):
        home = Path(os.environ["JAVA_HOME"])
        if (home / "bin" / "java").exists():
            return home
    java = shutil.which("java")
    if not java:
        raise JavaMissing(f"no `java` on PATH and JAVA_HOME is not set. {JAVA_HINT}")
    # /usr/bin/java -> /usr/lib/jvm/java-17-openjdk-amd64/bin/java
    return Path(os.path.realpath(java)).parents[1]


def java_major_version(home: Path) -> int:
    out = subprocess.run([str(home / "bin" / "java"), "-version"], capture_output=True, text=True, check=False)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not match:
        raise JavaMissing(f"could not read the Java version from {home}. {JAVA_HINT}")
    major = int(match.group(1))
    return int(match.group(2)) if major == 1 and match.group(2) else major


def check_java() -> Path:
    home = java_home()
    major = java_major_version(home)
    if major < 17:
        raise JavaMissing(f"found Java {major} at {home}. {JAVA_HINT}")
    return home


def spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent


def spark_process_env() -> dict[str, str]:
    """Environment for Spark JVMs and drivers: loopback only, our Java, the pyspark install."""
    env = dict(os.environ)
    env["JAVA_HOME"] = str(java_home())
    env["SPARK_HOME"] = str(spark_home())
    env.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    return env


def spark_pids_of(home: Path) -> set[int]:
    """Live Spark JVMs (pool daemons and run drivers) started under this DPE_HOME, found by the
    environment they inherited, so other Spark processes on the machine are never counted."""
    marker = f"DPE_HOME={home}".encode()
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if b"org.apache.spark" in (entry / "cmdline").read_bytes() and marker in (entry / "environ").read_bytes().split(b"\0"):
                found.add(int(entry.name))
        except OSError:
            continue
    return found
