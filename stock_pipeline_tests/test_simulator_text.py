"""The simulator's NumPy text formatting equals Python's format(), value for value, and its
JSON rows equal json.dumps; the server reuses a query's result while a client pages through it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stock_pipeline.baostock.simulator import SimulatorConfig, SimulatorServer
from stock_pipeline.baostock.simulator import text as t
from stock_pipeline.baostock.simulator.market import cents_str
from stock_pipeline_tests.helpers import exchange

TRICKY = [
    0.0, -0.0, 0.5, 1.5, 2.5, 0.125, 0.375, -0.125, 1e-9, -1e-9, 1e300, -1e300, np.nan, np.inf,
    -np.inf, 2.0**52, 2.0**53 + 1, 123456789.123456789, 0.00005, 0.00015, 0.00025, 1.00005,
    5e-324, 9999.99995, 99999999.99999, 0.1 + 0.2, 1e15 + 0.3,
]  # fmt: skip


def _floats() -> np.ndarray:
    rng = np.random.default_rng(3)
    return np.concatenate(
        [
            rng.random(40_000) * 100,
            rng.standard_normal(20_000) * 1e6,
            rng.integers(0, 10**7, 20_000) / 1e4,  # 4-decimal prices, as the market rounds them
            np.round(rng.random(20_000) * 1000, 4),
            # values on or next to a rounding tie at 4 to 6 decimals
            rng.integers(-(10**6), 10**6, 20_000) / 10.0 ** rng.integers(0, 8, 20_000)
            + 0.5e-6 * rng.integers(0, 3, 20_000),
            rng.random(1000) * 1e11,
            np.array(TRICKY),
        ]
    )


@pytest.mark.parametrize("decimals", [1, 2, 4, 6])
def test_fixed_equals_format(decimals: int) -> None:
    values = _floats()
    expected = [format(v, f".{decimals}f") for v in values.tolist()]
    assert t.to_strings(t.fixed(values, decimals)) == expected


def test_small_columns_equal_format() -> None:
    # Fewer than text._SMALL values are formatted by Python: same text, other code path.
    values = _floats()[-200:]
    cents = np.arange(-3, 197) * 37
    for chunk in range(0, 200, 7):
        part = values[chunk : chunk + 7]
        expected = [format(v, ".4f") for v in part.tolist()]
        assert t.fixed(part, 4).values == t.to_strings(t.fixed(part, 4)) == expected
        c = cents[chunk : chunk + 7]
        assert t.to_strings(t.cents(c)) == [cents_str(x) for x in c.tolist()]
        assert t.to_strings(t.integers(c)) == [str(x) for x in c.tolist()]


def test_integers_and_cents_equal_python() -> None:
    rng = np.random.default_rng(4)
    ints = np.concatenate(
        [rng.integers(-(10**12), 10**12, 20_000), [0, -1, 9, 10, 9999, 10_000, 10**8, 2**62]]
    )
    assert t.to_strings(t.integers(ints)) == [str(v) for v in ints.tolist()]
    assert t.to_strings(t.integers(np.array([-7.9, 7.9, 1e10]))) == ["-7", "7", "10000000000"]
    cents = np.concatenate([rng.integers(1, 10**7, 20_000), [0, 1, 9, 10, 99, 100, 101, -5]])
    assert t.to_strings(t.cents(cents)) == [cents_str(c) for c in cents.tolist()]


@pytest.mark.parametrize("n", [1, 23, 24, 300])
def test_tables_of_any_size_equal_json_dumps(n: int) -> None:
    rng = np.random.default_rng(n)
    suspended = rng.random(n) < 0.3
    prices, pct = rng.integers(1, 10**6, n), rng.standard_normal(n) * 3
    columns = [
        t.take(
            t.strings([f"2024-{i // 28 + 1:02d}-{i % 28 + 1:02d}" for i in range(400)]),
            slice(5, 5 + n),
        ),
        t.constant("sh.600000", n),
        t.blank(t.cents(prices), suspended),
        t.blank(t.fixed(pct, 6), suspended),
        t.flags(~suspended),
        t.constant("", n),
    ]
    rows = [list(r) for r in zip(*(t.to_strings(c) for c in columns), strict=True)]
    assert rows[0][2] == ("" if suspended[0] else cents_str(int(prices[0])))
    table = t.Table(columns)
    for lo, hi in ((0, None), (n // 3, n // 2 + 1)):
        expected = json.dumps({"record": rows[lo:hi]}, separators=(",", ":"))
        assert table.records_json(lo, hi) == expected


def test_table_json_equals_json_dumps() -> None:
    names = ["2024-01-02", "", "sh.600000", "华中科技", "x"]
    suspended = np.array([0, 1, 0, 0, 1], dtype=bool)
    table = t.Table(
        [
            t.strings(names),
            t.constant("3", 5),
            t.blank(t.cents(np.arange(5) * 101), suspended),
            t.constant("", 5),
            t.flags(suspended),
        ]
    )
    prices = ["0.0000", "", "2.0200", "3.0300", ""]
    rows = [
        [a, "3", b, "", "1" if s else "0"] for a, b, s in zip(names, prices, suspended, strict=True)
    ]

    def dumps(r: list) -> str:
        return json.dumps({"record": r}, ensure_ascii=False, separators=(",", ":"))

    assert table.records_json() == dumps(rows)
    assert table.records_json(1, 3) == dumps(rows[1:3])
    assert table.records_json(7, 9) == dumps([])
    assert t.Table.concat([table, table]).records_json(3, 7) == dumps((rows + rows)[3:7])
    picked = table.select(np.array([4, 0]))
    picked.put(4, t.flags(np.array([False, True])))
    assert picked.records_json() == dumps([rows[4][:4] + ["0"], rows[0][:4] + ["1"]])
    assert t.Table([]).records_json() == '{"record":[]}'


def test_paging_reuses_the_result_of_the_connection() -> None:
    with SimulatorServer(SimulatorConfig(seed=5, n_codes=400)) as sim:
        login = ("00", ["login", "anonymous", "123456", "0"])

        def page(n: int, day: str = "2024-06-24") -> tuple[str, list[str]]:
            return "35", ["query_all_stock", "anonymous", str(n), "150", day]

        replies = exchange((sim.host, sim.port), [login, page(1), page(2), page(3), page(1)])
        records = [json.loads(body[6])["record"] for _, body in replies[1:]]
        assert [len(r) for r in records[:2]] == [150, 150] and 0 < len(records[2]) < 150
        assert records[3] == records[0]
        assert sim.stats.reused_results == 3
        exchange((sim.host, sim.port), [login, page(1, "2024-06-25"), page(1)])
        assert sim.stats.reused_results == 3  # another day, then another connection
