"""Who a process is to its region's nats-server: the NKey user roles, and their seeds.

Each process role is an NKey user of the region's client port with only the subjects and API calls
that role makes; ``tongban nats-config`` (tongban/ops/natsconfig/permissions.py) renders those permissions.
"""

from __future__ import annotations

import os
from enum import StrEnum

import nkeys

from tongban.core.errors import ConfigError


class NatsRole(StrEnum):
    """Who connects to a region's own nats-server. Each role is an NKey user of the region's client
    port with only the subjects and JetStream API calls that role makes (:func:`client_permissions`);
    the value is also the second token of the role's inbox prefix (``_INBOX_<code>.<role>``)."""

    GATEWAY = "gateway"
    """Gateways (with their forwarder of requests, event consumer, witness and proof responder)."""
    CONNECTOR = "connector"
    """Connectors (with their case worker, forwarder of events and dead-lettering)."""
    OPERATOR = "operator"
    """Operator tools: ``tongban dlq``, ``registry publish``, ``catalogue publish``, ``ledger
    check-receipt``; stream inspection and the dead-letter stream's admin."""
    ADMIN = "admin"
    """Every subject and API of the region: the single-machine topology only (its readiness probe
    and the tests' own clients). Never a user of the production configs."""


PROCESS_ROLES = (NatsRole.GATEWAY, NatsRole.CONNECTOR, NatsRole.OPERATOR)
"""The roles of the production configs (deploy/nats/regions/<code>/authorization.conf)."""


def new_user_seed() -> bytes:
    """A fresh NKey user seed (``SU…``): 32 random bytes, encoded as nats-server expects."""
    return bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))


def public_key(seed: bytes) -> str:
    """The public NKey (``U…``) of a user seed.

    Raises:
        ConfigError: not a valid NKey user seed.
    """
    try:
        kp = nkeys.from_seed(bytearray(seed.strip()))
    except nkeys.NkeysError as exc:
        raise ConfigError("not a valid NKey seed") from exc
    try:
        key = bytes(kp.public_key).decode()
    finally:
        kp.wipe()
    if not key.startswith("U"):
        raise ConfigError("not an NKey user seed")
    return key
