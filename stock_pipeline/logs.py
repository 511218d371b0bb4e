"""Log setup for the CLI and scripts: short structured lines on stderr."""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)-7s %(name)s %(message)s"


def configure_logging(level: str = "INFO") -> None:
    """Send stock_pipeline's (and Alembic's) logs to stderr at `level`; quiet the chatty rest."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    for name in ("stock_pipeline", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(level)
