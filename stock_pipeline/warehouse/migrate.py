"""Run the Alembic migrations in migrations/ against a warehouse URL."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util import CommandError

_PACKAGE = Path(__file__).resolve().parent.parent


class MigrationError(RuntimeError):
    """Alembic refused a command (e.g. an unknown revision); the message says what to give."""


def migrations_dir() -> Path:
    """migrations/ beside the package in a checkout; inside the package in a built wheel."""
    for candidate in (_PACKAGE.parent / "migrations", _PACKAGE / "_migrations"):
        if (candidate / "env.py").exists():
            return candidate
    raise FileNotFoundError("the migrations folder is missing from this installation")


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    # ConfigParser interpolates '%': escape it (URL-encoded passwords contain it).
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def revisions() -> list[str]:
    """The migrations' revision ids, oldest first."""
    script = ScriptDirectory(str(migrations_dir()))
    return [rev.revision for rev in reversed(list(script.walk_revisions()))]


def upgrade(url: str, revision: str = "head") -> None:
    _run("upgrade", revision, lambda: command.upgrade(alembic_config(url), revision))


def downgrade(url: str, revision: str) -> None:
    _run("downgrade", revision, lambda: command.downgrade(alembic_config(url), revision))


def current(url: str) -> None:
    try:
        command.current(alembic_config(url), verbose=False)
    except CommandError as exc:
        raise MigrationError(
            f"cannot read the warehouse's revision: {exc}. Was it migrated by a newer "
            f"stock_pipeline? This one knows {', '.join(revisions())}"
        ) from exc


def _run(action: str, revision: str, migrate: Callable[[], None]) -> None:
    try:
        migrate()
    except CommandError as exc:
        raise MigrationError(
            f"cannot {action} the warehouse to {revision!r}: {exc}. Give head, base, a step "
            f"such as -1, or a revision: {', '.join(revisions())}"
        ) from exc
