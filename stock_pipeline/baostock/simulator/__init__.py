"""BaoStock simulator: a TCP server speaking BaoStock's wire protocol over a synthetic market.

The unmodified `baostock` client works against it once pointed at its endpoint
(`stock_pipeline.baostock.endpoint.point_client_at`). Used by tests, benchmarks and the offline
demo; never by the production path.

    from stock_pipeline.baostock.simulator import SimulatorConfig, SimulatorServer
    with SimulatorServer(SimulatorConfig(seed=7), port=0) as sim:
        point_client_at(sim.host, sim.port)
"""

from .market import AdjustFactor, CorporateAction, Listing, Market
from .protocol import (
    BAD_USER_OR_PASSWORD,
    BLACKLIST_ERROR_CODE,
    CODE_INVALID,
    FIELD_INVALID,
    NO_LOGIN,
    PARAM_ERROR,
    RATE_LIMIT_ERROR_CODE,
    TRANSIENT_ERROR_CODE,
)
from .server import (
    FAULT_BAD_VALUE,
    FAULT_BLACKLIST,
    FAULT_DROP,
    FAULT_ERROR,
    FAULT_KINDS,
    FAULT_MALFORMED,
    FAULT_MISSING_FIELD,
    FAULT_SILENT,
    FAULT_SLOW,
    FaultContext,
    SimulatorConfig,
    SimulatorProcess,
    SimulatorServer,
    SimulatorStats,
)

__all__ = [
    "BAD_USER_OR_PASSWORD",
    "BLACKLIST_ERROR_CODE",
    "CODE_INVALID",
    "FAULT_BAD_VALUE",
    "FAULT_BLACKLIST",
    "FAULT_DROP",
    "FAULT_ERROR",
    "FAULT_KINDS",
    "FAULT_MALFORMED",
    "FAULT_MISSING_FIELD",
    "FAULT_SILENT",
    "FAULT_SLOW",
    "FIELD_INVALID",
    "NO_LOGIN",
    "PARAM_ERROR",
    "RATE_LIMIT_ERROR_CODE",
    "TRANSIENT_ERROR_CODE",
    "AdjustFactor",
    "CorporateAction",
    "FaultContext",
    "Listing",
    "Market",
    "SimulatorConfig",
    "SimulatorProcess",
    "SimulatorServer",
    "SimulatorStats",
]
