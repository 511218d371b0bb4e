"""The configuration templates: .env.example, dagster.yaml, workspace.yaml.

They live at the top of a checkout; a wheel carries them in this folder (pyproject.toml's
force-include), so an installed stock-pipeline can still hand them out.
"""

from __future__ import annotations

from pathlib import Path

NAMES = (".env.example", "dagster.yaml", "workspace.yaml")

_HERE = Path(__file__).resolve().parent


def template_path(name: str) -> Path:
    """Where the template `name` (one of NAMES) is in this installation."""
    if name not in NAMES:
        raise ValueError(f"no template named {name!r}: the templates are {', '.join(NAMES)}")
    for candidate in (_HERE / name, _HERE.parent.parent / name):  # wheel, then checkout
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"template {name} is missing from this installation ({_HERE}): reinstall stock-pipeline"
    )


def template_text(name: str) -> str:
    """The template `name` (one of NAMES) as text, e.g. to write a starting .env."""
    return template_path(name).read_text(encoding="utf-8")
