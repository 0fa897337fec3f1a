"""Fixtures of the operator-tooling tests."""

from __future__ import annotations

import pytest

from tests.ops.natsdeploy import DOMAIN, HUBS, REGIONS
from tongban.ops import natsconfig


@pytest.fixture(scope="module")
def secrets(tmp_path_factory: pytest.TempPathFactory) -> natsconfig.Secrets:
    """NATS secrets for the three regions, as `tongban nats-config --dev` makes them: the hub's
    certificate also names 127.0.0.1, where the boot test runs the hub."""
    hosts = [f"{h}{DOMAIN}" for h in HUBS] + list(natsconfig.LOOPBACK)
    return natsconfig.ensure_secrets(
        tmp_path_factory.mktemp("nats-secrets"),
        REGIONS,
        hosts,
        region_hosts=lambda r: [*natsconfig.region_hosts(r), *natsconfig.LOOPBACK],
    )
