"""`stock-pipeline` on bad input: one line saying what is wrong and what to do, exit code 2."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stock_pipeline.cli import main
from stock_pipeline.logs import configure_logging

Run = Callable[..., tuple[int, str]]


@pytest.fixture
def run_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> Iterator[Run]:
    """main(argv) with only the given STOCK_PIPELINE_* variables set (HOME in tmp_path unless
    given); returns the exit code and stdout + stderr. Restores the logging main configures."""
    for name in list(os.environ):
        if name.startswith("STOCK_PIPELINE_") and not name.startswith("STOCK_PIPELINE_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    loggers = [logging.getLogger(n) for n in ("stock_pipeline", "alembic.runtime.migration")]
    levels = [logger.level for logger in loggers]

    def run(*argv: str, **env: str) -> tuple[int, str]:
        monkeypatch.setenv("STOCK_PIPELINE_HOME", str(tmp_path / "home"))
        for name, value in env.items():
            monkeypatch.setenv(f"STOCK_PIPELINE_{name}", value)
        try:
            code = main(list(argv))
        except SystemExit as exc:  # argparse
            code = exc.code
        out = capsys.readouterr()
        return code, out.out + out.err

    yield run
    root.handlers[:], root.level = saved
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)


def _one_error_line(output: str) -> str:
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if "error:" in line]
    assert len(errors) == 1, output
    return errors[0]


@pytest.mark.parametrize("command", ["upgrade", "downgrade"])
def test_unknown_revision(run_cli: Run, make_database: Callable[[], str], command: str):
    code, output = run_cli("db", command, "nosuchrev", DATABASE_URL=make_database())
    assert code == 2
    line = _one_error_line(output)
    assert f"cannot {command} the warehouse to 'nosuchrev'" in line
    assert "Give head, base, a step such as -1, or a revision: 0001" in line


def test_bad_relative_revision(run_cli: Run, make_database: Callable[[], str]):
    code, output = run_cli("db", "downgrade", "-5", DATABASE_URL=make_database())
    assert code == 2
    assert "cannot downgrade the warehouse to '-5'" in _one_error_line(output)


def test_bad_log_level_names_the_choices(run_cli: Run):
    code, output = run_cli("--log-level", "bogus", "services", "status")
    assert code == 2
    assert "argument --log-level: invalid choice: 'BOGUS'" in _one_error_line(output)
    assert "'DEBUG', 'INFO', 'WARNING', 'ERROR'" in output


def test_log_level_any_case(run_cli: Run):
    external = {"DATABASE_URL": "postgresql://u@h/db", "REDIS_URL": "redis://h:6379/0"}
    code, output = run_cli("--log-level", "debug", "services", "stop", **external)
    assert code == 0, output
    assert logging.getLogger("stock_pipeline").level == logging.DEBUG


def test_configure_logging_rejects_unknown_levels():
    with pytest.raises(ValueError, match="log level 'bogus' is not one of DEBUG, INFO"):
        configure_logging("bogus")


def test_baostock_endpoint_port_not_a_number(run_cli: Run):
    code, output = run_cli("services", "status", BAOSTOCK_ENDPOINT="127.0.0.1:abc")
    assert code == 2
    line = _one_error_line(output)
    assert "STOCK_PIPELINE_BAOSTOCK_ENDPOINT must be host:port (e.g. 127.0.0.1:10030)" in line


def test_database_url_port_not_a_number(run_cli: Run):
    code, output = run_cli("db", "current", DATABASE_URL="postgresql://u:s3cret@127.0.0.1:abc/db")
    assert code == 2
    line = _one_error_line(output)
    assert "STOCK_PIPELINE_DATABASE_URL: postgresql://u:***@127.0.0.1:abc/db has a port" in line
    assert "s3cret" not in output


def test_database_url_the_driver_rejects(run_cli: Run):
    url = "postgresql://u@127.0.0.1:1/db?nosuchoption=1"
    code, output = run_cli("db", "current", DATABASE_URL=url)
    assert code == 2
    line = _one_error_line(output)
    assert 'invalid URI query parameter: "nosuchoption"' in line
    assert "STOCK_PIPELINE_DATABASE_URL is right" in line


@pytest.mark.parametrize("command", [["services", "status"], ["db", "current"]])
def test_home_is_a_file(run_cli: Run, tmp_path: Path, command: list[str]):
    home = tmp_path / "not-a-folder"
    home.write_text("")
    code, output = run_cli(*command, HOME=str(home))
    assert code == 2
    line = _one_error_line(output)
    assert f"STOCK_PIPELINE_HOME={home} is a file, not a folder: point it at a folder" in line


def test_home_is_a_file_for_redis_alone(run_cli: Run, tmp_path: Path):
    home = tmp_path / "not-a-folder"
    home.write_text("")
    external_postgres = "postgresql://u@127.0.0.1:1/db"
    code, output = run_cli("services", "status", HOME=str(home), DATABASE_URL=external_postgres)
    assert code == 2
    assert f"STOCK_PIPELINE_HOME={home} is a file" in _one_error_line(output)


def test_home_under_a_file(run_cli: Run, tmp_path: Path):
    (tmp_path / "file").write_text("")
    code, output = run_cli("services", "status", HOME=str(tmp_path / "file" / "home"))
    assert code == 2
    assert "cannot be used (Not a directory)" in _one_error_line(output)


def test_console_script_prints_one_line(tmp_path: Path):
    """The same through a real process: nothing but the line on stderr."""
    (tmp_path / "file").write_text("")
    done = subprocess.run(
        [sys.executable, "-m", "stock_pipeline.cli", "services", "status"],
        env={"PATH": os.environ["PATH"], "STOCK_PIPELINE_HOME": str(tmp_path / "file")},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith("stock-pipeline: error: STOCK_PIPELINE_HOME=")
    assert done.stderr.count("\n") == 1
