"""The Java check: the machine's Java 17, version parsing, and what it says when Java is missing.

Fake `java` binaries are small shell scripts run as real child processes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from lambda_arch.runtime.java import (
    INSTALL_HINT,
    JavaMissing,
    check_java,
    java_executable,
    java_major_version,
    main,
)

MACHINE_JAVA = shutil.which("java")
needs_java = pytest.mark.skipif(MACHINE_JAVA is None, reason="no java on PATH")


def fake_java_home(root: Path, stderr: str) -> Path:
    """A JAVA_HOME whose bin/java prints `stderr` as `java -version` does (on stderr)."""
    binary = root / "bin" / "java"
    binary.parent.mkdir(parents=True)
    binary.write_text(f"#!/bin/sh\necho '{stderr}' >&2\n")
    binary.chmod(0o755)
    return root


@needs_java
def test_finds_the_machines_java_17(monkeypatch: pytest.MonkeyPatch) -> None:
    assert MACHINE_JAVA is not None
    monkeypatch.delenv("JAVA_HOME", raising=False)
    assert java_executable() == MACHINE_JAVA
    assert java_major_version(MACHINE_JAVA) == 17
    assert check_java() == 17
    # The same runtime named by JAVA_HOME (its real home, behind the PATH symlinks).
    home = Path(os.path.realpath(MACHINE_JAVA)).parents[1]
    monkeypatch.setenv("JAVA_HOME", str(home))
    assert java_executable() == str(home / "bin" / "java")
    assert check_java() == 17


@needs_java
def test_main_prints_the_version(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    assert main() == 0
    assert capsys.readouterr().out == "Java 17 found\n"


def test_java_home_at_nothing_and_no_java_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-such-jdk"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    assert java_executable() is None
    with pytest.raises(JavaMissing) as missing:
        check_java()
    assert str(missing.value) == f"Spark needs Java and none was found: {INSTALL_HINT}"
    assert "openjdk-17-jre-headless" in INSTALL_HINT and "JAVA_HOME" in INSTALL_HINT
    assert main() == 1
    assert capsys.readouterr().err == f"lambda-arch: {missing.value}\n"


@pytest.mark.parametrize(
    ("reported", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('openjdk version "21" 2023-09-19', 21),
        ('java version "1.8.0_292"', 8),
        ('openjdk version "11.0.2" 2019-01-15', 11),
        ("no version here", None),
    ],
)
def test_java_major_version_parses_what_java_reports(
    tmp_path: Path, reported: str, major: int | None
) -> None:
    home = fake_java_home(tmp_path / "jdk", reported)
    assert java_major_version(str(home / "bin" / "java")) == major


def test_java_major_version_of_something_that_does_not_run(tmp_path: Path) -> None:
    assert java_major_version(str(tmp_path / "missing")) is None
    not_executable = tmp_path / "java"
    not_executable.write_text("")
    assert java_major_version(str(not_executable)) is None


def test_an_unsupported_java_home_is_named_in_the_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = fake_java_home(tmp_path / "jdk11", 'openjdk version "11.0.2" 2019-01-15')
    monkeypatch.setenv("JAVA_HOME", str(home))
    java = str(home / "bin" / "java")
    assert java_executable() == java  # JAVA_HOME wins over PATH
    with pytest.raises(JavaMissing) as missing:
        check_java()
    assert str(missing.value).startswith(f"Spark 4.3 needs Java 17 or 21 but {java} is Java 11: ")
    unreadable = fake_java_home(tmp_path / "odd", "garbage")
    monkeypatch.setenv("JAVA_HOME", str(unreadable))
    with pytest.raises(JavaMissing, match="is an unreadable version"):
        check_java()


@needs_java
def test_java_home_at_nothing_is_reported_even_with_java_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyspark

    missing_home = tmp_path / "no-such-jdk"
    # What Spark's launcher does with this JAVA_HOME (fails before any JVM starts).
    spark_class = Path(pyspark.__file__).parent / "bin" / "spark-class"
    launched = subprocess.run(
        [str(spark_class), "org.apache.spark.deploy.SparkSubmit", "--version"],
        env={**os.environ, "JAVA_HOME": str(missing_home)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert launched.returncode != 0
    monkeypatch.setenv("JAVA_HOME", str(missing_home))
    with pytest.raises(JavaMissing, match="JAVA_HOME") as missing:
        check_java()
    # One line naming the bad setting, what to do, and the java that would work.
    message = str(missing.value)
    assert "\n" not in message and str(missing_home) in message and MACHINE_JAVA in message
