"""Real parts for the browser test: `lambda-arch up` in a temp home, and Chromium.

The stack is started the way a user starts it (`lambda-arch up --no-traffic`) with free ports
and a fixed LAMBDA_ARCH_START_DATE; it is stopped by PID (SIGTERM to `up`, then SIGKILL to
whatever of its process tree is still alive), and the fixture fails when anything is left.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lambda_arch.runtime.broker import free_port
from tests.ui.stack import (
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    UI_TIMEOUT_MS,
    Stack,
    running_stack,
    stack_env,
)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """`lambda-arch up --no-traffic` in a temp home with free ports, up and answering."""
    env = stack_env(tmp_path / "home", free_port(), free_port(), free_port())
    with running_stack(tmp_path, env) as running:
        yield running
    leftovers = running.leftovers
    assert leftovers == [], f"still running after up stopped (killed now): {leftovers}"
    assert running.process.returncode == 0, running.output()


@pytest.fixture
def artifacts() -> Path:
    """test-artifacts/ui/ of the checkout, emptied of an earlier run's screenshots."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    return ARTIFACTS


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """Keep each phase's report on the item, so fixtures can tell a failed test."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def page(request: pytest.FixtureRequest, artifacts: Path) -> Iterator[Any]:
    """A Chromium page (1600x1000); on failure a screenshot goes to test-artifacts/ui/."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import expect, sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs it (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            context = browser.new_context(viewport={"width": 1600, "height": 1000})
            context.set_default_timeout(UI_TIMEOUT_MS)
            expect.set_options(timeout=UI_TIMEOUT_MS)  # assertions wait as long as actions
            tab = context.new_page()
            yield tab
            report = getattr(request.node, "report_call", None)
            if report is not None and report.failed:
                with contextlib.suppress(PlaywrightError):  # a crashed page has no picture
                    tab.screenshot(path=artifacts / f"failure-{request.node.name}.png")
        finally:
            browser.close()
