"""Spark needs a Java 17 or 21 runtime: find it, or say exactly what to install."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

SUPPORTED_JAVA = (17, 21)
INSTALL_HINT = (
    "install a Java 17 or 21 runtime (Debian/Ubuntu: apt-get install openjdk-17-jre-headless; "
    "macOS: brew install openjdk@17) or point JAVA_HOME at one"
)


class JavaMissing(RuntimeError):
    """No usable Java runtime; the message says what to install."""


def java_executable() -> str | None:
    """The java binary Spark will use: $JAVA_HOME/bin/java when JAVA_HOME is set (Spark's
    launcher, bin/spark-class, then never looks at PATH), else the one on PATH; None if absent."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = os.path.join(java_home, "bin", "java")
        return candidate if os.access(candidate, os.X_OK) else None
    return shutil.which("java")


def java_major_version(executable: str) -> int | None:
    """The major version `java -version` reports, or None when it cannot be read."""
    try:
        result = subprocess.run(
            [executable, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', result.stderr + result.stdout)
    if match is None:
        return None
    major = int(match.group(1))
    # Java 8 and older report "1.8".
    return int(match.group(2) or 0) if major == 1 else major


def check_java() -> int:
    """The Java major version, or raise JavaMissing with what to install."""
    executable = java_executable()
    on_path = shutil.which("java")
    if executable is None and os.environ.get("JAVA_HOME") and on_path:
        # Spark's launcher runs $JAVA_HOME/bin/java and fails, whatever is on PATH.
        raise JavaMissing(
            f"JAVA_HOME={os.environ['JAVA_HOME']} has no bin/java, and Spark runs "
            f"$JAVA_HOME/bin/java: point JAVA_HOME at a Java 17 or 21 runtime, or unset it "
            f"to use {on_path}"
        )
    if executable is None:
        raise JavaMissing(f"Spark needs Java and none was found: {INSTALL_HINT}")
    major = java_major_version(executable)
    if major is None or major not in SUPPORTED_JAVA:
        found = "an unreadable version" if major is None else f"Java {major}"
        raise JavaMissing(
            f"Spark 4.3 needs Java 17 or 21 but {executable} is {found}: {INSTALL_HINT}"
        )
    return major


def main() -> int:
    try:
        major = check_java()
    except JavaMissing as missing:
        print(f"lambda-arch: {missing}", file=sys.stderr)
        return 1
    print(f"Java {major} found")
    return 0


if __name__ == "__main__":
    sys.exit(main())
