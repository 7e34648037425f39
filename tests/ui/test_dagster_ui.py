"""The Dagster UI in Chromium, against `lambda-arch up` with real runs behind it.

Two past days of events land through a real Spark run; the browser then finds every asset of
CONTRACT section 5 in the asset graph, launches a two-day backfill of the batch group from the
UI, waits for its single run, and reads the asset check results on an asset page. Screenshots
go to test-artifacts/ui/.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Locator, Page, expect

from tests.ui.stack import START_DATE, UI_TIMEOUT_MS, Stack

LOCATION = "lambda_arch"
REPOSITORY = {"repositoryLocationName": LOCATION, "repositoryName": "__repository__"}
CONTRACT_ASSETS = (
    "play_events_raw",
    "play_events_quarantine",
    "trending_speed",
    "discovery_speed",
    "sessions_speed",
    "play_events_clean",
    "trending_batch",
    "discovery_batch",
    "sessions_batch",
    "trending_serving",
    "discovery_serving",
)
BATCH_GROUP = "batch"
BATCH_ASSETS = (
    "play_events_clean",
    "trending_batch",
    "discovery_batch",
    "device_mix_batch",
    "sessions_batch",
)
DAYS = (START_DATE, "2026-03-02")
# 2,000 events over 2.5 days from START_DATE (100 events/s of event time / speedup): the
# first two days are complete, the third is under way.
PRODUCE = [
    *("--start", f"{START_DATE}T00:00:00Z", "--events", "2000"),
    *("--speedup", "10800", "--seed", "20260301"),
]
# Bounds for a loaded 2-core machine: alone, landing takes ~60 s and the backfill ~80 s.
LANDING_TIMEOUT_S = 240.0
BACKFILL_TIMEOUT_S = 420.0
FAILED_RUN_STATUSES = {"FAILURE", "CANCELED", "CANCELING"}
# Final statuses of a check execution, as the asset page's list of checks labels them.
CHECK_LABELS = {
    "SUCCEEDED": "Succeeded",
    "FAILED": "Failed",
    "EXECUTION_FAILED": "Execution failed",
    "SKIPPED": "Skipped",
}

INSTIGATORS = """
query ($repo: RepositorySelector!) {
  sensorsOrError(repositorySelector: $repo) { ... on Sensors { results { name id } } }
  schedulesOrError(repositorySelector: $repo) { ... on Schedules { results { name id } } }
}"""
STOP_SENSOR = """
mutation ($id: String) {
  stopSensor(id: $id) {
    __typename ... on StopSensorMutationResult { instigationState { status } }
  }
}"""
STOP_SCHEDULE = """
mutation ($id: String) {
  stopRunningSchedule(id: $id) {
    __typename ... on ScheduleStateResult { scheduleState { status } }
  }
}"""
LAUNCH_RUN = """
mutation ($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on Error { message }
  }
}"""
RUN = """
query ($id: ID!) { runOrError(runId: $id) { __typename ... on Run { status } } }"""
BACKFILL = """
query ($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { status partitionNames runs(limit: 10) { runId status } }
  }
}"""
MATERIALIZED = """
query ($key: AssetKeyInput!, $partitions: [String!]) {
  assetOrError(assetKey: $key) {
    ... on Asset { assetMaterializations(partitions: $partitions) { partition runId } }
  }
}"""
ASSET_CHECKS = """
{
  assetNodes {
    assetKey { path }
    assetChecksOrError {
      ... on AssetChecks {
        checks { name executionForLatestMaterialization { status runId } }
      }
    }
  }
}"""


def stop_automation(stack: Stack) -> None:
    """Stop every sensor and schedule of the code location: the test's runs are then the only
    runs, so the backfill launched from the UI is what materializes the two days, and no other
    run competes for the CPUs."""
    found = stack.graphql(INSTIGATORS, {"repo": REPOSITORY})
    sensors = {s["name"]: s["id"] for s in found["sensorsOrError"]["results"]}
    assert {"kafka_lag_sensor", "day_complete_sensor"} <= set(sensors), sorted(sensors)
    for sensor_id in sensors.values():
        stopped = stack.graphql(STOP_SENSOR, {"id": sensor_id})["stopSensor"]
        assert stopped["instigationState"]["status"] == "STOPPED", stopped
    for schedule in found["schedulesOrError"]["results"]:
        stopped = stack.graphql(STOP_SCHEDULE, {"id": schedule["id"]})["stopRunningSchedule"]
        assert stopped["scheduleState"]["status"] == "STOPPED", stopped


def produce_two_days(stack: Stack) -> None:
    """`lambda-arch produce` 2.5 days of events from START_DATE into the stack's broker."""
    produced = subprocess.run(
        [sys.executable, "-m", "lambda_arch.cli", "produce", *PRODUCE, "--quiet"],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert produced.returncode == 0, produced.stderr
    assert "produced 2,000 records" in produced.stderr, produced.stderr


def wait_for_run(stack: Stack, run_id: str, timeout_s: float) -> None:
    """Until the run succeeds; fail as soon as it fails."""

    def succeeded() -> bool:
        status = stack.graphql(RUN, {"id": run_id})["runOrError"]["status"]
        assert status not in FAILED_RUN_STATUSES, f"run {run_id} ended {status}"
        return status == "SUCCESS"

    stack.poll(f"success of run {run_id}", succeeded, timeout_s)


def land_events(stack: Stack) -> None:
    """Land the topic in the lake with a real run: speed_job's counts step (it lands and
    counts every view), from GraphQL."""
    from assets.speed import counts

    params = {
        "selector": {
            **REPOSITORY,
            "jobName": "speed_job",
            "assetSelection": [{"path": key.path} for key in counts.keys],
        },
        "mode": "default",
        "executionMetadata": {"tags": [{"key": "lambda_arch/reason", "value": "ui-test"}]},
    }
    launched = stack.graphql(LAUNCH_RUN, {"params": params})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    wait_for_run(stack, launched["run"]["runId"], LANDING_TIMEOUT_S)


def wait_until_still(page: Page, locator: Locator, timeout_s: float = 10.0) -> None:
    """Until the element's box stops moving (an animation ended), at most timeout_s."""
    deadline = time.monotonic() + timeout_s
    previous = None
    while time.monotonic() < deadline:
        box = locator.bounding_box()
        if box is not None and box == previous:
            return
        previous = box
        page.wait_for_timeout(300)


def check_asset_graph(page: Page, stack: Stack, artifacts: Path) -> None:
    """Every CONTRACT asset key is a node of the global asset graph."""
    page.goto(f"{stack.url}/asset-groups")
    heading = page.get_by_text("Global asset lineage", exact=True)
    expect(heading).to_be_visible(timeout=UI_TIMEOUT_MS)
    graph = page.locator("svg foreignObject")
    expect(graph.get_by_text(BATCH_GROUP, exact=True).first).to_be_visible()
    # Groups start collapsed; the graph's keyboard shortcut Alt+E expands them all.
    heading.click()
    page.keyboard.press("Alt+KeyE")
    # The expanded groups go into the URL; loaded afresh and zoomed out, the whole graph shows.
    expect(page).to_have_url(re.compile(r"[?&]expanded="))
    page.reload()
    node = graph.get_by_text("play_events_clean", exact=True)
    expect(node).to_have_count(1)
    zoom_in = page.locator("button:has([aria-label='zoom_in'])")
    zoom_out = page.locator("button:has([aria-label='zoom_out'])")
    for _ in range(2):
        zoom_out.click()
        wait_until_still(page, node)  # the graph animates to its new scale
    page.screenshot(path=artifacts / "graph.png")
    # Zoomed out, long names are cut in the middle: zoom in until every name has been seen
    # whole, once each. (Zoomed in, the tallest group may leave the screen: the graph draws only
    # the nodes in view, so a name counts once it was seen at any of the zoom levels.)
    seen: dict[str, int] = {}
    for attempt in range(7):
        for key in CONTRACT_ASSETS:
            count = graph.get_by_text(key, exact=True).count()
            if count:
                seen[key] = count
        if set(seen) >= set(CONTRACT_ASSETS) or attempt == 6:
            break
        zoom_in.click()
        wait_until_still(page, node)
    missing = [key for key in CONTRACT_ASSETS if key not in seen]
    assert not missing, f"assets not in the graph: {missing}"
    assert all(count == 1 for count in seen.values()), seen


def launch_backfill_from_ui(page: Page, stack: Stack, artifacts: Path) -> str:
    """Materialize the batch group for DAYS through the partition dialog; the backfill id."""
    page.goto(f"{stack.url}/locations/{LOCATION}/asset-groups/{BATCH_GROUP}")
    page.get_by_role("button", name=re.compile(r"Materialize all")).click()
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_text(re.compile(r"^Launch runs to materialize"))).to_be_visible()
    # Once the partitions loaded: the dialog shows the last 90 days; the test's days are older.
    expect(dialog.get_by_text(re.compile(r"Showing \d+ of \d+ partitions")).first).to_be_visible()
    show_all = dialog.get_by_text("Show all partitions", exact=True)
    if show_all.count():
        show_all.click()
    selection = dialog.get_by_role("textbox")
    selection.fill(f"[{DAYS[0]}...{DAYS[-1]}]")
    selection.press("Enter")
    expect(dialog.get_by_text(f"{len(DAYS)} partitions", exact=True)).to_be_visible()
    page.screenshot(path=artifacts / "backfill-dialog.png")
    dialog.get_by_role("button", name="Launch backfill").click()
    toast = page.get_by_text(re.compile(r"^Created backfill \w+$"))
    expect(toast).to_be_visible()
    return toast.inner_text().split()[-1]


def wait_for_backfill(page: Page, stack: Stack, backfill_id: str, artifacts: Path) -> str:
    """Until the backfill's one run succeeded; the backfill page shows every asset done and
    both days are materialized by that run. Its id."""

    def run_succeeded() -> bool:
        found = stack.graphql(BACKFILL, {"id": backfill_id})["partitionBackfillOrError"]
        assert found["__typename"] == "PartitionBackfill", found
        assert sorted(found["partitionNames"]) == list(DAYS), found
        statuses = [run["status"] for run in found["runs"]]
        assert FAILED_RUN_STATUSES.isdisjoint(statuses), found
        return bool(statuses) and all(status == "SUCCESS" for status in statuses)

    stack.poll(f"successful run of backfill {backfill_id}", run_succeeded, BACKFILL_TIMEOUT_S)
    found = stack.graphql(BACKFILL, {"id": backfill_id})["partitionBackfillOrError"]
    assert len(found["runs"]) == 1, f"a single-run backfill, not {found['runs']}"

    page.goto(f"{stack.url}/runs/b/{backfill_id}")
    expect(page.get_by_text(f"{DAYS[0]}...{DAYS[-1]}", exact=True)).to_be_visible()
    for asset in BATCH_ASSETS:
        expect(page.get_by_role("link", name=asset).first).to_be_visible()
    # One progress bar per asset; each full once the run's materializations are recorded.
    expect(page.get_by_text("100% completed", exact=True)).to_have_count(
        len(BATCH_ASSETS), timeout=UI_TIMEOUT_MS
    )
    page.screenshot(path=artifacts / "backfill.png")

    run_id = found["runs"][0]["runId"]
    for asset in BATCH_ASSETS:
        answer = stack.graphql(MATERIALIZED, {"key": {"path": [asset]}, "partitions": list(DAYS)})
        events = answer["assetOrError"]["assetMaterializations"]
        assert sorted(e["partition"] for e in events) == list(DAYS), (asset, events)
        assert {e["runId"] for e in events} == {run_id}, (asset, events)
    return run_id


def checks_by_asset(stack: Stack) -> dict[str, dict[str, dict[str, Any] | None]]:
    """Asset name -> check name -> the check's execution for the asset's latest
    materialization (None: never executed)."""
    nodes = stack.graphql(ASSET_CHECKS)["assetNodes"]
    return {
        node["assetKey"]["path"][-1]: {
            check["name"]: check["executionForLatestMaterialization"]
            for check in node["assetChecksOrError"].get("checks", [])
        }
        for node in nodes
    }


def check_results_on_asset_page(page: Page, stack: Stack, run_id: str, artifacts: Path) -> None:
    """An asset page lists every check of its asset, each with its result: play_events_clean,
    or another asset whose checks the backfill run (or, failing that, any run) executed."""
    checks = checks_by_asset(stack)
    assert any(checks.values()), f"no asset checks in the definitions: {checks}"

    def executed_by(asset: str, run: str | None) -> dict[str, str]:
        return {
            name: execution["status"]
            for name, execution in checks[asset].items()
            if execution is not None
            and execution["status"] in CHECK_LABELS
            and run in (None, execution["runId"])
        }

    candidates = [a for a in ("play_events_clean", *sorted(checks)) if executed_by(a, run_id)]
    candidates += [a for a in sorted(checks) if executed_by(a, None)]
    assert candidates, f"no asset check has a result: {checks}"
    asset = candidates[0]
    # Results of the backfill run are final: the page must show exactly those.
    results = executed_by(asset, run_id) or executed_by(asset, None)

    page.goto(f"{stack.url}/assets/{asset}?view=checks")
    expect(page.get_by_text(f"Checks ({len(checks[asset])})", exact=True)).to_be_visible()
    any_label = re.compile("|".join(["Not evaluated", *CHECK_LABELS.values()]), re.IGNORECASE)
    for name in sorted(checks[asset]):
        # Each entry of the list: the check's name, and its status right under it.
        entry = page.locator(f"[title='{name}']").first.locator("xpath=..")
        expect(entry, f"check {name} on the {asset} page").to_contain_text(name)
        label = CHECK_LABELS.get(results.get(name, ""), any_label)
        expect(entry, f"result of check {name}").to_contain_text(label, ignore_case=True)
    page.screenshot(path=artifacts / "checks.png")


@pytest.mark.slow
@pytest.mark.timeout(900)  # a hard bound; about 3 min when the machine is not overloaded
def test_dagster_ui_graph_backfill_and_checks(stack: Stack, page: Page, artifacts: Path) -> None:
    started = time.monotonic()

    def lap(what: str) -> None:
        print(f"{what}: {time.monotonic() - started:.0f} s after up (up took {stack.up_s:.0f} s)")

    stop_automation(stack)
    produce_two_days(stack)
    land_events(stack)
    lap("events landed")

    check_asset_graph(page, stack, artifacts)
    lap("asset graph checked")
    backfill_id = launch_backfill_from_ui(page, stack, artifacts)
    run_id = wait_for_backfill(page, stack, backfill_id, artifacts)
    lap(f"backfill {backfill_id} done")
    check_results_on_asset_page(page, stack, run_id, artifacts)
    lap("check results seen")
