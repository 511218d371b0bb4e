"""The Redis hot cache: what strategies read most, a few keys per code, one version at a time.

    keys.py        key names and versions ({prefix}:current -> {prefix}:{version}:...)
    columns.py     typed columns of a small frame, and frames built from them
    codec.py       such a frame as compact bytes (bars, cross-section), decoded in microseconds
    frames.py      the frames of the cache and of the read API (stock_pipeline/read.py)
    connection.py  which Redis (configured or embedded) and CacheUnreachable
    refresh.py     a new version from the warehouse, then the switch (refresh_cache)

Modules are imported where used: importing the package loads nothing.
"""
