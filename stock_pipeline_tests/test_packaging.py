"""Packaging: `uv build` of a clean clone gives an sdist and a wheel named by the git tag, and the
wheel, installed in a fresh venv, runs `stock-pipeline` and migrates from its own migrations."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import psycopg2
import pytest

import stock_pipeline
from stock_pipeline import templates
from stock_pipeline.cli import main

REPO = Path(__file__).resolve().parent.parent
TAG, VERSION = "v9.8.7", "9.8.7"
TEMPLATES = [f"stock_pipeline/templates/{name}" for name in templates.NAMES]


def test_templates_are_found_in_the_checkout():
    for name in templates.NAMES:
        assert templates.template_path(name) == REPO / name
    assert "STOCK_PIPELINE_DATABASE_URL" in templates.template_text(".env.example")
    with pytest.raises(ValueError, match=r"no template named 'x.yaml': the templates are \.env"):
        templates.template_path("x.yaml")


def test_version_is_the_installed_distributions(capsys: pytest.CaptureFixture[str]):
    assert stock_pipeline.__version__ == importlib.metadata.version("stock-pipeline")
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"stock-pipeline {stock_pipeline.__version__}\n"


def _uv() -> str:
    beside_python = Path(sys.executable).parent / "uv"
    found = shutil.which("uv") or (str(beside_python) if beside_python.exists() else None)
    if found is None:
        pytest.skip("uv is neither on PATH nor beside this Python: install it (.ci/run does)")
    return found


def _run(*args: str | Path, cwd: Path, env: dict[str, str]) -> tuple[str, float]:
    """stdout of a command that must succeed, and the seconds it took."""
    began = time.perf_counter()
    done = subprocess.run(
        [str(arg) for arg in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    took = time.perf_counter() - began
    command = " ".join(str(arg) for arg in args)
    assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    return done.stdout, took


def _clean_env(tmp_path: Path) -> dict[str, str]:
    """This environment without the test run's venv, Python path and pipeline settings: the
    installed wheel must stand on its own."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
        and not name.startswith("STOCK_PIPELINE_")
    }
    env["STOCK_PIPELINE_HOME"] = str(tmp_path / "home")
    return env


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_wheel_from_a_clean_clone_installs_and_migrates(
    tmp_path: Path, make_database: Callable[[], str]
):
    if not (REPO / ".git").exists():
        pytest.skip(f"{REPO} is not a git checkout: nothing to clone")
    uv = _uv()
    env = _clean_env(tmp_path)
    clone, dist, venv = tmp_path / "clone", tmp_path / "dist", tmp_path / "venv"
    # Only what is committed is cloned; the tag is the clone's own, never pushed anywhere.
    _run("git", "clone", "--quiet", REPO, clone, cwd=tmp_path, env=env)
    _run("git", "tag", TAG, cwd=clone, env=env)

    build = (uv, "build", "--python", sys.executable, "--out-dir", dist)
    _, build_s = _run(*build, cwd=clone, env=env)
    wheel = dist / f"stock_pipeline-{VERSION}-py3-none-any.whl"
    sdist = dist / f"stock_pipeline-{VERSION}.tar.gz"
    assert sorted(dist.glob("stock_pipeline-*")) == [wheel, sdist]

    with zipfile.ZipFile(wheel) as archive:
        in_wheel = set(archive.namelist())
    migrations = sorted(p.relative_to(clone) for p in (clone / "migrations").rglob("*.py"))
    expected = {f"stock_pipeline/_{p.as_posix()}" for p in migrations} | {
        "stock_pipeline/_migrations/script.py.mako",
        "stock_pipeline/_migrations/versions/0001_initial_schema.py",
        "stock_pipeline/cli.py",
        *TEMPLATES,
    }
    assert expected <= in_wheel, f"missing from the wheel: {sorted(expected - in_wheel)}"
    assert not [name for name in in_wheel if name.startswith(("stock_pipeline_tests/", "bench"))]

    with tarfile.open(sdist) as archive:
        in_sdist = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    needed = {"pyproject.toml", "PKG-INFO", "README.md", "migrations/env.py", *templates.NAMES}
    assert needed <= in_sdist, f"missing from the sdist: {sorted(needed - in_sdist)}"
    unwanted = ("benchmarks/", ".ci/", ".stock_pipeline/", ".venv/", "dist/")
    assert not [name for name in in_sdist if name.startswith(unwanted)]

    # The locked versions (those the suite ran with) as constraints: a deterministic install,
    # mostly from uv's cache.
    constraints = tmp_path / "constraints.txt"
    export = ("export", "--frozen", "--no-dev", "--no-emit-project", "--no-hashes")
    _run(uv, *export, "--quiet", "--output-file", constraints, cwd=clone, env=env)
    _run(uv, "venv", "--quiet", "--python", sys.executable, venv, cwd=tmp_path, env=env)
    python, cli = venv / "bin" / "python", venv / "bin" / "stock-pipeline"
    install = ("pip", "install", "--quiet", "--python", python, "--constraint", constraints)
    _, install_s = _run(uv, *install, wheel, cwd=tmp_path, env=env)
    print(f"[packaging] uv build {build_s:.1f}s, wheel install {install_s:.1f}s")

    help_text, _ = _run(cli, "--help", cwd=tmp_path, env=env)
    assert "{db,services," in help_text
    assert _run(cli, "--version", cwd=tmp_path, env=env)[0] == f"stock-pipeline {VERSION}\n"
    probe = (
        "import sysconfig, stock_pipeline.templates as t; from stock_pipeline.warehouse import "
        "migrate; print(sysconfig.get_paths()['purelib']); print(migrate.migrations_dir()); "
        "print(t.template_path('dagster.yaml')); print(migrate.revisions()[-1])"
    )
    out, _ = _run(python, "-c", probe, cwd=tmp_path, env=env)
    site_packages, where, template, head = out.splitlines()
    package = Path(site_packages).resolve() / "stock_pipeline"
    assert Path(where) == package / "_migrations"
    assert Path(template) == package / "templates" / "dagster.yaml"

    dsn = make_database()
    _run(cli, "db", "upgrade", cwd=tmp_path, env={**env, "STOCK_PIPELINE_DATABASE_URL": dsn})
    with closing(psycopg2.connect(dsn)) as conn, conn.cursor() as cur:
        cur.execute("SELECT version_num FROM alembic_version")
        assert cur.fetchall() == [(head,)]
