"""Point the `baostock` client at a server of our choosing (real service, or the simulator).

The client reads `baostock.common.contants.BAOSTOCK_SERVER_IP` / `_PORT` when `login()` connects,
so setting them before login redirects it without editing the package.
"""

from __future__ import annotations

import baostock.common.contants as _contants


def point_client_at(host: str, port: int) -> None:
    """Make the next `baostock.login()` in this process connect to host:port."""
    _contants.BAOSTOCK_SERVER_IP = host
    _contants.BAOSTOCK_VIP_SERVER_IP = host  # API keys starting with "bs-" use the VIP address
    _contants.BAOSTOCK_SERVER_PORT = int(port)
