"""Benchmark: what loading the code location adds to `import dagster`.

    uv run python benchmarks/definitions_load.py [--repeat 7]

Dagster imports the code location in every process it starts (CLI, webserver, daemon, each run
and step), so definitions must load fast and offline. Each import runs in a fresh interpreter,
alternating the two, with no network and no database reachable; medians are compared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def seconds(statement: str, env: dict[str, str]) -> float:
    began = time.perf_counter()
    subprocess.run([sys.executable, "-c", statement], env=env, check=True, capture_output=True)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        env = {
            **os.environ,
            "STOCK_PIPELINE_HOME": home,  # no stored calendar, nothing embedded started
            "STOCK_PIPELINE_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
            "STOCK_PIPELINE_BAOSTOCK_ENDPOINT": "127.0.0.1:1",
        }
        dagster, definitions = [], []
        for _ in range(args.repeat):
            dagster.append(seconds("import dagster", env))
            definitions.append(seconds("import stock_pipeline.definitions", env))
    base, full = statistics.median(dagster), statistics.median(definitions)
    for name, values in (("import_dagster", dagster), ("import_definitions", definitions)):
        print(json.dumps({"stage": name, "runs_s": [round(v, 3) for v in values]}))
    print(
        json.dumps(
            {
                "summary": "definitions_load",
                "import_dagster_s": round(base, 3),
                "import_definitions_s": round(full, 3),
                "added_s": round(full - base, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
