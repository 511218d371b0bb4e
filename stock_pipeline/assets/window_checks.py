"""SQL checks of a partitioned table over each run's trading days, declared as data.

No `from __future__ import annotations` here: Dagster reads the check function's annotations
(context, resources) as objects.
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import dagster as dg

from stock_pipeline.assets.runtime import Window, window_of
from stock_pipeline.calendar import TradingCalendar
from stock_pipeline.resources import WarehouseResource


@dataclass(frozen=True)
class WindowCheck:
    """A SQL check of a partitioned table over the run's trading days."""

    name: str
    description: str
    blocking: bool  # a failure stops the assets downstream in the same run
    evaluate: Callable[[Window, WarehouseResource], Awaitable[dg.AssetCheckResult]]


def window_check(
    asset: str, spec: WindowCheck, calendar: TradingCalendar, partitions: dg.PartitionsDefinition
) -> dg.AssetChecksDefinition:
    """`spec` as a Dagster check of `asset`, evaluated over each run's partition range."""

    @dg.asset_check(
        asset=asset,
        name=spec.name,
        partitions_def=partitions,
        blocking=spec.blocking,
        description=spec.description,
    )
    async def check(
        context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
    ) -> dg.AssetCheckResult:
        return await spec.evaluate(window_of(context, calendar), warehouse)

    return check


def check_result(passed: bool, metadata: dict[str, Any], failure: str) -> dg.AssetCheckResult:
    """An ERROR-severity outcome whose description (`failure`) is shown only when it failed."""
    return dg.AssetCheckResult(
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata=metadata,
        description=None if passed else failure,
    )
