"""What the NATS permission tests share: the service they send for, how long a read may wait, and a
region leaf's view of its connections (``/connz``)."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from tongban.ops.natsserver import Topology

SVC = "SBJFJLCX0001"
READ_TIMEOUT = 10.0


def connections(topology: Topology, region: str) -> dict[str, Any]:
    """``/connz`` of ``region``'s leaf, with each connection's user."""
    url = f"{topology.leaves[region].monitor_url}/connz?auth=1"
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]
