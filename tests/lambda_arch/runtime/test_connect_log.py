"""The Spark log holds real errors only: the Connect server's INVALID_CURSOR.DISCONNECTED race
(a stack trace per affected client query, hundreds per replay) is dropped by the log4j2
configuration the project writes, and a real query error still shows.

Two views: Spark's own log4j2 jars with the written configuration log both messages exactly as
the server's ErrorUtils does (deterministic: the race itself is timing-dependent); and a real
Connect server runs client queries, a foreachBatch stream (where the race was seen) and a
failing query, and its log has the failure but no INVALID_CURSOR.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from lambda_arch.common.config import Settings
from lambda_arch.runtime.spark import write_log4j
from lambda_arch.runtime.spark_connect import spark_home

pytestmark = pytest.mark.jvm

ERROR_UTILS = "org.apache.spark.sql.connect.utils.ErrorUtils"
# What Spark 4.3's server logs (ErrorUtils.handleError), by the operation that failed.
CURSOR_RACE = "Spark Connect RPC error during: async-grpc-response-sender. UserId: . SessionId: s1."
QUERY_FAILED = "Spark Connect RPC error during: execute. UserId: . SessionId: s1."

LOGS = """
import org.apache.logging.log4j.LogManager;
public class Logs {
    public static void main(String[] args) {
        var log = LogManager.getLogger("%(logger)s");
        log.error("%(race)s", new RuntimeException(
            "[INVALID_CURSOR.DISCONNECTED] The cursor is invalid. SQLSTATE: HY109"));
        log.error("%(failed)s", new RuntimeException(
            "[TABLE_OR_VIEW_NOT_FOUND] The table or view `nowhere` cannot be found."));
    }
}
"""


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("LAMBDA_ARCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SPARK_REMOTE", raising=False)
    return Settings.from_env()


def test_the_written_log_config_drops_the_cursor_race_and_keeps_query_errors(
    settings: Settings, tmp_path: Path
) -> None:
    config = write_log4j(settings)
    source = tmp_path / "Logs.java"
    source.write_text(LOGS % {"logger": ERROR_UTILS, "race": CURSOR_RACE, "failed": QUERY_FAILED})
    jars = spark_home() / "jars"
    classpath = ":".join(str(jar) for jar in sorted(jars.glob("log4j-*.jar")))
    logged = subprocess.run(
        ["java", f"-Dlog4j2.configurationFile=file:{config}", "-cp", classpath, str(source)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert logged.returncode == 0, logged.stderr
    assert "INVALID_CURSOR" not in logged.stderr and "async-grpc" not in logged.stderr
    assert f"ERROR ErrorUtils: {QUERY_FAILED}" in logged.stderr, logged.stderr
    assert "TABLE_OR_VIEW_NOT_FOUND" in logged.stderr  # with its exception
