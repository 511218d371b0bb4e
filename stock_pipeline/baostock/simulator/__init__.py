"""BaoStock simulator: a TCP server speaking BaoStock's wire protocol over a synthetic market.

The unmodified `baostock` client works against it once pointed at its endpoint; used by tests,
benchmarks and the offline demo, never by the production path.

    from stock_pipeline.baostock.endpoint import point_client_at
    with SimulatorServer(SimulatorConfig(seed=7), port=0) as sim:  # background thread
        point_client_at(sim.host, sim.port)
        ...  # baostock.login(), queries; sim.market computes expected values; sim.stats counts
    with SimulatorProcess(SimulatorConfig(seed=7, prewarm=True)) as sim:  # child process
        ...

Faults (all off by default; randomness from a seeded RNG): rates `drop_rate`, `silent_rate`,
`error_rate` (TRANSIENT_ERROR_CODE), `blacklist_rate` (BLACKLIST_ERROR_CODE, message has 黑名单),
`malformed_rate`, `slow_rate` (+spike_ms), plus `latency_ms`/`jitter_ms` on every request and
`max_rps` (RATE_LIMIT_ERROR_CODE). Deterministic targeting: `fault_codes={"sh.600000": "drop"}`
hits every request about that code (kinds: FAULT_KINDS; "empty" is a successful reply without
rows, as BaoStock sometimes sends for a code it lists as trading); `fault_hook(FaultContext) ->
kind | None` sees method, code, params, connection id and per-connection request number (must
be picklable for a process).
Logins never get random faults unless `fault_login=True`. Login fails (10001002) for users in
`bad_users` ({"baduser"}); any other user/password works.

Generation is lazy (~3 ms per stock the first time, then cached); `prewarm=True` builds the
whole universe before serving, so benchmarks measure the pool, not the generator.
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
    FAULT_EMPTY,
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
    SimulatorStartError,
    SimulatorStats,
)

__all__ = [
    "BAD_USER_OR_PASSWORD",
    "BLACKLIST_ERROR_CODE",
    "CODE_INVALID",
    "FAULT_BAD_VALUE",
    "FAULT_BLACKLIST",
    "FAULT_DROP",
    "FAULT_EMPTY",
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
    "SimulatorStartError",
    "SimulatorStats",
]
