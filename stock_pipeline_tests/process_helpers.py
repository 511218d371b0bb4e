"""Process assertions shared by the BaoStock pool and fetch tests."""

from __future__ import annotations

import time

import psutil


def assert_gone(pids: list[int], within_s: float = 5.0) -> None:
    """Every pid has exited (zombies count as gone only once reaped by their parent)."""
    deadline = time.monotonic() + within_s
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if psutil.pid_exists(p)]
        time.sleep(0.05)
    assert not alive, f"worker processes still running: {alive}"
