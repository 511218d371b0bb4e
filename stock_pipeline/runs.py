"""Runs launched as `dagster asset materialize` child processes and followed through the
instance's event log: each asset's rows and seconds, each check's outcome, the assets' own
progress lines. `stock-pipeline demo` and `stock-pipeline backfill` (without a daemon) run
this way: Dagster's own CLI, so a run is exactly what a user would launch.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROGRESS_PREFIXES = (
    *(f"[p{n}." for n in range(6)),
    "[etl.",
    "[indicators.",
    "[cache.",
)


class RunFailed(Exception):
    """A run's process failed; the message holds the tail of its output."""


@dataclass
class Outcome:
    runs: list[str] = field(default_factory=list)
    # A range run records an event per partition: each asset and check is shown once per run.
    shown: set[str] = field(default_factory=set)
    passed_checks: int = 0
    failed_checks: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return len(self.failed_checks)


def materialize(
    instance: Any,
    env: dict[str, str],
    assets: tuple[str, ...],
    days: tuple[dt.date | str, dt.date | str] | None,
    title: str,
    outcome: Outcome,
    label: str = "demo",
) -> None:
    """One `dagster asset materialize` run of `assets` (names, or one selection string) over
    the partition range `days` (trading days, or keys of another partitions definition),
    followed through the instance's event log; RunFailed (with its output's tail) if it
    fails."""
    command = [
        sys.executable,
        "-m",
        "dagster",
        "asset",
        "materialize",
        "-m",
        "stock_pipeline.definitions",
        "--select",
        ",".join(assets),
    ]
    if days is not None:
        command += ["--partition-range", f"{days[0]}...{days[1]}"]
    log_path = Path(env["DAGSTER_HOME"]) / f"{label}-last-run.log"
    print(f"{label}: run {len(outcome.runs) + 1}: {title}")
    outcome.shown.clear()
    launched = time.time()
    with open(log_path, "w", encoding="utf-8") as log, _child(command, env, log) as child:
        run_id = _follow(child, instance, launched, outcome)
    if child.returncode != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        raise RunFailed(
            f"the run failed (exit {child.returncode}); its output is in {log_path}:\n  "
            + "\n  ".join(tail)
        )
    outcome.runs.append(run_id or "?")


@contextlib.contextmanager
def _child(command: list[str], env: dict[str, str], log: Any) -> Iterator[subprocess.Popen]:
    """The run's process in its own group: Ctrl-C stops it and everything it started."""
    child = subprocess.Popen(
        command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        yield child
    finally:
        if child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGINT)
            try:
                child.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
                child.wait()


def _follow(
    child: subprocess.Popen, instance: Any, launched: float, outcome: Outcome
) -> str | None:
    """Print the run's progress from its event log until the process exits: the run is the
    newest one created after the launch (the demo is the only one launching here)."""
    run_id: str | None = None
    cursor = None
    while True:
        done = child.poll() is not None
        if run_id is None:
            newest = instance.get_run_records(limit=1)
            if newest and newest[0].create_timestamp.timestamp() >= launched - 1:
                run_id = newest[0].dagster_run.run_id
        if run_id is not None:
            records = instance.get_records_for_run(run_id, cursor=cursor, limit=500)
            for record in records.records:
                _print_event(record.event_log_entry, outcome)
            cursor = records.cursor
            if records.has_more:
                continue
        if done:
            return run_id
        time.sleep(0.5)


def _print_event(entry: Any, outcome: Outcome) -> None:
    event = entry.dagster_event
    if event is None:
        message = entry.user_message or ""
        # The assets' own progress lines; writer and pool details stay in the event log.
        if message.startswith(PROGRESS_PREFIXES) and entry.level >= 20:
            print(f"    {message}")
        return
    kind = event.event_type_value
    step = entry.step_key or ""
    if kind == "STEP_FAILURE":
        error = event.step_failure_data.error
        print(f"  x {step} failed: {error.message.strip() if error else ''}")
    elif kind == "ASSET_MATERIALIZATION":
        materialization = event.step_materialization_data.materialization
        metadata = materialization.metadata
        rows = metadata.get("dagster/row_count")
        seconds = metadata.get("seconds_wall")
        key = materialization.asset_key.to_user_string()
        if key in outcome.shown:
            return
        outcome.shown.add(key)
        rows_text = f"{rows.value:,} rows" if rows is not None else ""
        time_text = f", {seconds.value:.1f}s" if seconds is not None else ""
        print(f"  + {key}: {rows_text}{time_text}")
    elif kind == "ASSET_CHECK_EVALUATION":
        evaluation = event.event_specific_data
        name = evaluation.check_name
        if name in outcome.shown:
            return
        outcome.shown.add(name)
        if evaluation.passed:
            outcome.passed_checks += 1
            print(f"    check {name}: passed")
        else:
            outcome.failed_checks.append(name)
            print(f"    check {name}: FAILED {evaluation.description or ''}")
