"""The Dagster UI of `stock-pipeline dev --simulator` in a real browser: Debian's chromium driven
by Playwright (its own browser download needs the internet; .ci/run installs chromium).

The lineage page shows every group and asset, the Automation page the schedule and the sensor,
both on; one partition of raw_all_stock is launched by clicking through the asset's launch
dialog, and its run succeeds. Screenshots go to test-artifacts/ui/ (kept by CI); when a step
fails, a screenshot and the page's HTML are saved next to them first.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stock_pipeline_tests.devserver import (
    DAILY_GRAPH_ASSETS,
    GROUPS,
    DevServer,
    dev_home,
    running_dev,
)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "ui"
TIMEOUT_MS = 90_000  # per UI action: a cold page on a busy 2-core machine
RUN_TIMEOUT_S = 600.0  # the run may queue behind the integrity sensor's runs
ASSET = "raw_all_stock"  # partitioned by trading day, no upstream: the cheapest partition
# Partitions back from the last: older than the integrity sensor's window (30 trading days by
# default), so the sensor never requests the same partition, within the dialog's 90 days.
PARTITIONS_BACK = 40
PARTITION_KEYS_QUERY = """query Keys($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) {
  ... on AssetNode { partitionKeys } } }"""


def _playwright_and_chromium() -> tuple[Any, str]:
    """Playwright's sync API and the browser to drive, or a skip saying what is missing."""
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is in the dev dependency group: uv sync"
    )
    chromium = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    if chromium is None:
        pytest.skip(f"no chromium at {CHROMIUM}: apt-get install chromium (.ci/run does)")
    return sync_api, chromium


@pytest.mark.slow
def test_ui_shows_the_graph_and_launches_one_partition():
    sync_api, chromium = _playwright_and_chromium()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with dev_home() as home, running_dev(home, "--codes", "30") as dev:
        dev.wait_ready()
        dev.graphql("mutation { setNuxSeen }")  # the first-visit community dialog covers pages
        partition = _partition_to_launch(dev)
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=chromium, args=CHROMIUM_ARGS, headless=True
            )
            try:
                ui = Ui(browser.new_page(viewport={"width": 1600, "height": 1000}), dev.url)
                ui.check_lineage()
                ui.check_automation()
                launched = time.time()
                ui.launch_partition(ASSET, partition)
                run_id = _wait_for_run(dev, partition, launched)
                ui.check_run(run_id, partition)
            finally:
                browser.close()
        dev.stop(signal.SIGINT)
    print("screenshots:", *(str(ARTIFACTS / name) for name in Ui.SAVED), sep="\n  ")


# The schedules (daily and by cadence) and the integrity sensor, all on by default.
AUTOMATIONS = (
    "daily_schedule",
    "financials_schedule",
    "corporate_actions_schedule",
    "snapshots_schedule",
    "weekly_bars_schedule",
    "monthly_bars_schedule",
    "macro_schedule",
    "integrity_sensor",
)


class Ui:
    """The pages the test visits, each step saving what the page showed if it fails."""

    SAVED = ("lineage.png", "automation.png", "launch-dialog.png", "run-succeeded.png")

    def __init__(self, page: Any, url: str):
        from playwright.sync_api import expect

        self.page, self.url, self.expect = page, url, expect
        page.set_default_timeout(TIMEOUT_MS)
        self.expect.set_options(timeout=TIMEOUT_MS)
        # In case the first-visit dialog shows anyway, it is closed before any action.
        page.add_locator_handler(page.get_by_role("button", name="Skip"), lambda b: b.click())

    def check_lineage(self) -> None:
        with self.step("lineage"):
            self.page.goto(f"{self.url}/asset-groups")
            for group in sorted(GROUPS):
                self.expect(self.page.get_by_text(group, exact=True).first).to_be_visible()
            self.screenshot("lineage.png")
            # The whole graph is taller than the page: each daily asset on its own page.
            for asset in sorted(DAILY_GRAPH_ASSETS):
                self.page.goto(f"{self.url}/assets/{asset}")
                self.expect(self.page.get_by_text(asset, exact=True).first).to_be_visible()

    def check_automation(self) -> None:
        with self.step("automation"):
            self.page.goto(f"{self.url}/automation")
            for name in AUTOMATIONS:
                link = self.page.get_by_role("link", name=re.compile(name))
                self.expect(link.first).to_be_visible()
            # Each automation's on/off toggle is a checkbox: all are on.
            checked = self.page.locator("input[type=checkbox]:checked")
            self.expect(checked).to_have_count(len(AUTOMATIONS))
            self.screenshot("automation.png")

    def launch_partition(self, asset: str, partition: str) -> None:
        """Asset page -> Materialize -> one partition typed in the launch dialog -> Launch."""
        with self.step("launch"):
            self.page.goto(f"{self.url}/assets/{asset}")
            self.page.get_by_role("button", name=re.compile("Materialize")).first.click()
            dialog = self.page.get_by_role("dialog")
            self.expect(dialog.get_by_text(f"Launch runs to materialize {asset}")).to_be_visible()
            keys = dialog.get_by_role("textbox").first
            keys.fill(partition)
            keys.press("Enter")
            self.expect(dialog.get_by_text("1 partition", exact=True)).to_be_visible()
            launch = dialog.get_by_role("button", name="Launch 1 run")
            self.expect(launch).to_be_enabled()
            self.screenshot("launch-dialog.png")
            launch.click()
            self.expect(dialog).to_be_hidden()

    def check_run(self, run_id: str, partition: str) -> None:
        with self.step("run"):
            self.page.goto(f"{self.url}/runs/{run_id}")
            self.expect(self.page.get_by_text("Success", exact=True).first).to_be_visible()
            self.expect(self.page.get_by_text(f"partition: {partition}")).to_be_visible()
            self.expect(self.page.get_by_text("RUN_SUCCESS").first).to_be_visible()
            self.screenshot("run-succeeded.png")

    def screenshot(self, name: str) -> None:
        self.page.screenshot(path=str(ARTIFACTS / name))

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        try:
            yield
        except Exception as exc:
            picture, html = ARTIFACTS / f"failed-{name}.png", ARTIFACTS / f"failed-{name}.html"
            with contextlib.suppress(Exception):
                self.page.screenshot(path=str(picture))
                html.write_text(self.page.content(), encoding="utf-8")
            raise AssertionError(
                f"UI step {name!r} failed at {self.page.url}: {exc}\nsee {picture} and {html}"
            ) from exc


def _partition_to_launch(dev: DevServer) -> str:
    answer = dev.graphql(PARTITION_KEYS_QUERY, {"key": {"path": [ASSET]}})
    keys = answer["assetNodeOrError"]["partitionKeys"]
    assert len(keys) > PARTITIONS_BACK, keys
    return keys[-PARTITIONS_BACK]


def _wait_for_run(dev: DevServer, partition: str, launched: float) -> str:
    """The id of the run the UI launched for `partition` (the one run of that partition created
    since the click: the sensor's runs are for other days), once it has succeeded."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    run_filter = {
        "tags": [{"key": "dagster/partition", "value": partition}],
        "createdAfter": launched - 5,
    }
    while True:
        runs = dev.runs(**run_filter)
        assert len(runs) <= 1, runs
        status = runs[0]["status"] if runs else None
        if status == "SUCCESS":
            return runs[0]["runId"]
        assert status not in ("FAILURE", "CANCELED"), f"{runs}\n{dev.tail()}"
        assert time.monotonic() < deadline, (
            f"the run of {ASSET} {partition} is {status or 'not created'} after "
            f"{RUN_TIMEOUT_S:.0f} s\n{dev.tail()}"
        )
        time.sleep(2.0)
