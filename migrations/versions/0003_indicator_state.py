"""technical_daily keeps the recursive indicators' state of each day (EMAs, Wilder averages,
traded bars), so a range of days continues exactly from the day before it.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 09:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copy of tables.INDICATOR_STATE_COLUMNS at this revision.
STATE_COLUMNS = {
    "traded_bars": "traded bars of the code through this day (warm-up of every indicator)",
    "ema12": "EMA12 of close_hfq (MACD)",
    "ema26": "EMA26 of close_hfq (MACD)",
    "avg_gain6": "Wilder average gain of close_hfq's changes (RSI6)",
    "avg_loss6": "Wilder average loss of close_hfq's changes (RSI6)",
    "avg_gain12": "Wilder average gain of close_hfq's changes (RSI12)",
    "avg_loss12": "Wilder average loss of close_hfq's changes (RSI12)",
    "avg_gain24": "Wilder average gain of close_hfq's changes (RSI24)",
    "avg_loss24": "Wilder average loss of close_hfq's changes (RSI24)",
    "tr_avg14": "Wilder average true range, also during ATR14's warm-up",
}


def upgrade() -> None:
    for name, comment in STATE_COLUMNS.items():
        kind = sa.Integer() if name == "traded_bars" else sa.Double()
        op.add_column("technical_daily", sa.Column(name, kind, nullable=True, comment=comment))


def downgrade() -> None:
    for name in reversed(STATE_COLUMNS):
        op.drop_column("technical_daily", name)
