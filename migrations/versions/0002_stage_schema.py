"""Schema stock_pipeline_stage: where the writer builds a partition whole before it is
swapped into its table (a full import, a re-import of a year). It holds nothing between loads.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 13:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("CREATE SCHEMA IF NOT EXISTS stock_pipeline_stage")


def downgrade() -> None:
    # Only ever leftovers of an interrupted load live here.
    op.execute("DROP SCHEMA IF EXISTS stock_pipeline_stage CASCADE")
