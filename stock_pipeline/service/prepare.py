"""`python -m stock_pipeline.service.prepare`: what the webserver and the daemon need before they
start, run by each service first (systemd ExecStartPre, else the wrapper's --prepare).

Starts the embedded PostgreSQL and Redis that no STOCK_PIPELINE_*_URL replaces (and leaves them
running: they serve both services), and writes `<home>/dagster/dagster.yaml` from the current
settings: Dagster's storage, the run queue and the `baostock` pool limit. The warehouse schema is
not migrated here: `stock-pipeline db upgrade` stays a deliberate step.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from stock_pipeline.settings import Settings


def write_if_changed(path: Path, text: str) -> bool:
    """Replace `path` in one step, and only when its text differs: the other service may be
    reading it at this moment."""
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)
    return True


def prepare(settings: Settings) -> list[str]:
    """Servers up and dagster.yaml current; returns what was done, one line each."""
    from stock_pipeline.instance import DAGSTER_FOLDER, instance_yaml
    from stock_pipeline.local import start_services

    with contextlib.ExitStack() as stack:
        services = start_services(settings, stack)
        stack.pop_all()  # leave what started running: the servers belong to the services now
    dagster_yaml = settings.home / DAGSTER_FOLDER / "dagster.yaml"
    changed = write_if_changed(dagster_yaml, instance_yaml(services.dagster_storage_url, settings))
    return [*services.notes, f"{dagster_yaml}: {'written' if changed else 'unchanged'}"]


def main() -> int:
    import psycopg2

    from stock_pipeline.embedded._service import EmbeddedServiceError
    from stock_pipeline.instance import DagsterStorageError
    from stock_pipeline.settings import SettingsError

    try:
        notes = prepare(Settings.from_env())
    except (
        SettingsError,
        EmbeddedServiceError,
        DagsterStorageError,
        psycopg2.Error,
        OSError,
    ) as exc:
        print(f"stock-pipeline service: cannot prepare the start: {exc}", file=sys.stderr)
        return 2
    for note in notes:
        print(f"prepare: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
