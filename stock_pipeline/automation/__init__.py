"""Automation: what runs the graph without anyone at the keyboard. The daily job and schedule
and the freshness the daily assets declare (daily.py), the integrity-gap sensor (integrity.py)
with its gap rules (gaps.py, no Dagster: the CLI commands use them too), and their assembly
(definitions.py)."""
