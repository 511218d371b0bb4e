"""`stock-pipeline simulator`: run the BaoStock simulator in the foreground until Ctrl-C/SIGTERM."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from datetime import date
from typing import Any

from .server import FAULT_KINDS, SimulatorConfig, SimulatorServer, SimulatorStartError

log = logging.getLogger("stock_pipeline.simulator")


def _port(text: str) -> int:
    """A TCP port for argparse: a readable error instead of bind()'s traceback."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port: use 0-65535 (0 picks one)")
    return port


def register(subparsers: Any) -> None:
    """Add the `simulator` subcommand to an argparse subparsers object."""
    parser = subparsers.add_parser(
        "simulator",
        help="run the offline BaoStock simulator (a TCP server the baostock client can use)",
        description=(
            "Serve a deterministic synthetic A-share market over BaoStock's wire protocol. "
            "Point the pipeline at it with STOCK_PIPELINE_BAOSTOCK_ENDPOINT=HOST:PORT."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=_port, default=10030, help="0 picks a free port")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--n-codes", type=int, default=5000, help="stocks in the universe")
    parser.add_argument("--start", type=date.fromisoformat, default=SimulatorConfig.start)
    parser.add_argument("--end", type=date.fromisoformat, default=SimulatorConfig.end)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added to every request")
    parser.add_argument("--jitter-ms", type=float, default=0.0, help="plus uniform [0, jitter)")
    rates = parser.add_argument_group("fault injection (rates in [0, 1], off by default)")
    for name in ("fault", "drop", "silent", "blacklist", "malformed", "slow"):
        rates.add_argument(f"--{name}-rate", type=float, default=0.0)
    rates.add_argument("--spike-ms", type=float, default=2000.0, help="latency of a slow fault")
    rates.add_argument("--max-rps", type=float, default=0.0, help="rate limit; 0 = unlimited")
    rates.add_argument(
        "--fault-code",
        action="append",
        default=[],
        metavar="CODE=KIND",
        help=f"always inject KIND ({', '.join(sorted(FAULT_KINDS))}) for requests about CODE",
    )
    parser.add_argument(
        "--prewarm", action="store_true", help="generate every stock's history before serving"
    )
    parser.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    fault_codes = {}
    for item in args.fault_code:
        code, sep, kind = item.partition("=")
        if not sep:
            raise ValueError(f"--fault-code {item!r}: expected CODE=KIND, e.g. sh.600000=empty")
        fault_codes[code.strip().lower()] = kind.strip()
    return SimulatorConfig(
        seed=args.seed,
        n_codes=args.n_codes,
        start=args.start,
        end=args.end,
        latency_ms=args.latency_ms,
        jitter_ms=args.jitter_ms,
        error_rate=args.fault_rate,
        drop_rate=args.drop_rate,
        silent_rate=args.silent_rate,
        blacklist_rate=args.blacklist_rate,
        malformed_rate=args.malformed_rate,
        slow_rate=args.slow_rate,
        spike_ms=args.spike_ms,
        max_rps=args.max_rps,
        fault_codes=fault_codes,
        prewarm=args.prewarm,
    )


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; logs one line with the endpoint once listening.

    Exit code 2 with one line on stderr when the configuration is invalid or the address
    cannot be bound (port taken, unknown host).
    """
    try:
        config = config_from_args(args)
        server = SimulatorServer(config, host=args.host, port=args.port)  # builds the market
    except ValueError as exc:  # a fault kind, rate, window or universe size out of range
        print(f"stock-pipeline: error: {exc}", file=sys.stderr)
        return 2

    def stop(signum: int, _frame: object) -> None:
        log.info("[simulator] signal %d: stopping", signum)
        threading.Thread(target=server.stop, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def ready(s: SimulatorServer) -> None:
        log.info(
            "[simulator] listening on %s (seed %d, %d codes, %s..%s, latency %.0f ms)",
            s.endpoint,
            config.seed,
            config.n_codes,
            config.start,
            config.end,
            config.latency_ms,
        )

    try:
        server.serve_forever(on_ready=ready)
    except SimulatorStartError as exc:
        print(f"stock-pipeline: error: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point (`python -m stock_pipeline.baostock.simulator.cli`)."""
    parser = argparse.ArgumentParser(prog="stock-pipeline")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
