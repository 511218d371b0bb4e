"""The Dagster code location (workspace.yaml loads it).

So far it provides the resources every asset will use; the P0-P5 raw assets, ETL, indicators,
cache refresh, partitions, schedules and sensors are added here as they land.
"""

from __future__ import annotations

import dagster as dg

from stock_pipeline.resources import BaostockResource, WarehouseResource

defs = dg.Definitions(
    resources={
        "baostock": BaostockResource(),
        "warehouse": WarehouseResource(),
    },
)
