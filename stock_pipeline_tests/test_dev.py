"""`stock-pipeline dev --simulator` in a process of its own, on a fresh home with the embedded
servers: the webserver serves the code location (every asset, the schedule, the sensor, the
job), the daemon runs the sensor, and SIGINT (a terminal's Ctrl-C) or SIGTERM (a service
manager's stop) ends dev and everything it started: no process left, the embedded PostgreSQL
and Redis stopped."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest

from stock_pipeline.embedded.postgres import EmbeddedPostgres
from stock_pipeline.embedded.redis import EmbeddedRedis
from stock_pipeline_tests.devserver import (
    ASSETS,
    ASSETS_QUERY,
    GROUPS,
    REPOSITORY_QUERY,
    DevServer,
    dev_home,
    running_dev,
)

STOP_TIMEOUT_S = 30.0
SENSOR_RUN_TIMEOUT_S = 180.0


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "during_a_run"),
    [(signal.SIGINT, True), (signal.SIGTERM, False)],
    ids=["SIGINT-during-a-sensor-run", "SIGTERM"],
)
def test_dev_serves_the_definitions_and_stops_everything(
    signum: int, during_a_run: bool, assert_no_server_in: Callable[..., None]
):
    with dev_home() as home, running_dev(home, "--codes", "30") as dev:
        ready_s = dev.wait_ready()
        _assert_definitions_served(dev)
        if during_a_run:  # the daemon runs: the sensor finds the empty warehouse's gaps
            _wait_for_a_started_run(dev)
        tree = dev.tree()
        assert len(tree) >= 3, tree  # dev, the webserver, the daemon (and their code servers)
        stop_s = dev.stop(signum, STOP_TIMEOUT_S)
        output = dev.text()
        assert dev.process.returncode == 0, output
        assert "stopped in" in output, output
        assert dev.leftovers(tree) == [], output
        for server in (EmbeddedPostgres(home / "postgres"), EmbeddedRedis(home / "redis")):
            assert not server.is_running(), output
            assert_no_server_in(server.dir.root, server.dir.data.resolve())
        print(f"dev ready in {ready_s:.1f} s, stopped by {signum!r} in {stop_s:.1f} s")


def _assert_definitions_served(dev: DevServer) -> None:
    nodes = dev.graphql(ASSETS_QUERY)["assetNodes"]
    groups = {node["assetKey"]["path"][-1]: node["groupName"] for node in nodes}
    assert set(groups) == ASSETS
    assert set(groups.values()) == GROUPS
    repositories = dev.graphql(REPOSITORY_QUERY)["repositoriesOrError"]["nodes"]
    assert len(repositories) == 1, repositories
    repository = repositories[0]
    schedules = {s["name"]: s["scheduleState"]["status"] for s in repository["schedules"]}
    sensors = {s["name"]: s["sensorState"]["status"] for s in repository["sensors"]}
    for name in ("daily_schedule", "financials_schedule", "corporate_actions_schedule",
                 "snapshots_schedule", "weekly_bars_schedule", "monthly_bars_schedule",
                 "macro_schedule"):  # fmt: skip
        assert schedules.get(name) == "RUNNING", schedules
    assert sensors.get("integrity_sensor") == "RUNNING", sensors
    assert "daily_job" in {job["name"] for job in repository["jobs"]}


def _wait_for_a_started_run(dev: DevServer) -> None:
    deadline = time.monotonic() + SENSOR_RUN_TIMEOUT_S
    while not dev.runs(statuses=["STARTED"]):
        assert time.monotonic() < deadline, (
            f"no run started within {SENSOR_RUN_TIMEOUT_S:.0f} s of ready: {dev.runs()}\n"
            + dev.tail()
        )
        time.sleep(1.0)
