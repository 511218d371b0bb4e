"""Software-defined assets, by layer: raw/ (BaoStock -> raw_* tables), etl/ (business tables).

`partitions.py` defines the trading-day partitions; `runtime.py` is what every asset body uses
around read -> compute -> write (window, sources, metadata, bookkeeping).
"""

import warnings

import dagster as dg

# Single-run backfills and partitioned checks are marked beta/preview in Dagster 1.13; we rely on
# them knowingly, so their warnings would only clutter every log.
warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)
