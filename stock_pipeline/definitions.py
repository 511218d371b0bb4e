"""The Dagster code location (workspace.yaml loads it): assets, checks, resources, executor,
and the automation that runs them (the daily job and schedule, the integrity sensor).

Everything is built from the settings read here, once: the trading calendar (bundled XSHG,
extended by the stored BaoStock calendar under STOCK_PIPELINE_HOME) gives the trading-day
partitions; resources hand the settings down to the pool and the warehouse.
"""

from __future__ import annotations

import os

import dagster as dg

from stock_pipeline.assets.cache import cache_assets
from stock_pipeline.assets.etl import p1, p2, p3, p4, p5
from stock_pipeline.assets.etl.p0 import etl_assets
from stock_pipeline.assets.indicators import indicator_assets
from stock_pipeline.assets.partitions import build_partitions
from stock_pipeline.assets.raw import BAOSTOCK_STEP_TAG, raw_assets
from stock_pipeline.assets.raw.checks import P0_CHECKS
from stock_pipeline.automation.definitions import build_automation
from stock_pipeline.calendar import load_calendar
from stock_pipeline.instance import apply_event_settings
from stock_pipeline.resources import BaostockResource, CacheResource, WarehouseResource
from stock_pipeline.settings import Settings

# Steps run in processes forked from a server that has the project imported (about a second
# per step instead of several); at most one BaoStock step at a time within a run, whatever the
# instance's pool limits.
EXECUTOR = dg.multiprocess_executor.configured(
    {
        "start_method": {"forkserver": {"preload_modules": ["stock_pipeline.definitions"]}},
        "tag_concurrency_limits": [{"key": BAOSTOCK_STEP_TAG, "limit": 1}],
    }
)


def _secret(variable: str) -> dg.EnvVar | None:
    """An EnvVar (shown by name, resolved at run time) when the variable is set."""
    return dg.EnvVar(variable) if os.environ.get(variable) else None


def default_resources() -> dict[str, dg.ConfigurableResource]:
    return {
        "baostock": BaostockResource(password=_secret("STOCK_PIPELINE_BAOSTOCK_PASSWORD")),
        "warehouse": WarehouseResource(database_url=_secret("STOCK_PIPELINE_DATABASE_URL")),
        "cache": CacheResource(redis_url=_secret("STOCK_PIPELINE_REDIS_URL")),
    }


def build_definitions(
    settings: Settings, resources: dict[str, dg.ConfigurableResource] | None = None
) -> dg.Definitions:
    """The code location for `settings` (tests pass their own resources)."""
    calendar = load_calendar(settings.home)
    every = build_partitions(calendar, settings.start_date)
    partitions = every.day
    etl, etl_checks = etl_assets(calendar, partitions)
    indicators, indicator_checks = indicator_assets(calendar, partitions)
    cache, cache_checks = cache_assets(calendar, partitions)
    groups, group_checks = [], []
    for group in (p1, p2, p3, p4, p5):
        assets, checks = group.group_assets(calendar, every)
        groups += assets
        group_checks += checks
    automation = build_automation(calendar, every, settings)
    assets = [*raw_assets(calendar, every.by_kind), *etl, *indicators, *cache, *groups]
    return dg.Definitions(
        assets=[_with_freshness(a, automation.freshness) for a in assets],
        asset_checks=[*P0_CHECKS, *etl_checks, *indicator_checks, *cache_checks, *group_checks],
        jobs=automation.jobs,
        schedules=automation.schedules,
        sensors=automation.sensors,
        resources=resources if resources is not None else default_resources(),
        executor=EXECUTOR,
    )


def _with_freshness(
    asset: dg.AssetsDefinition, policies: dict[str, dg.FreshnessPolicy]
) -> dg.AssetsDefinition:
    def apply(spec: dg.AssetSpec) -> dg.AssetSpec:
        policy = policies.get(spec.key.to_user_string())
        return spec if policy is None else spec.replace_attributes(freshness_policy=policy)

    return asset.map_asset_specs(apply)


apply_event_settings()
defs = build_definitions(Settings.from_env())
