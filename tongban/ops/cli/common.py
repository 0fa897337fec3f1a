"""What the command groups share: the flags that name a node or an operator's TLS credentials, the
node's config, a tool's NATS connection, a gRPC channel to a gateway."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TypeAlias

import grpc
from nats.aio.client import Client as NATS

from tongban.runtime.config import Config
from tongban.runtime.natsroles import NatsRole
from tongban.runtime.node import connect_nats
from tongban.runtime.telemetry import configure_logging

DEFAULT_STATE = ".tongban"
"""The dev stack's state directory (``tongban dev``), where ``--region`` finds a node's config."""

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
"""What ``add_subparsers`` returns: each command group's ``add_parsers`` registers on it."""


def node_flags(p: argparse.ArgumentParser) -> None:
    """Which region's node a tool acts for: its config, or a dev stack region."""
    p.add_argument("--config", default="", help="the region's node config (TOML)")
    p.add_argument("--region", default="", help="dev stack region (config at <state-dir>/<region>/node.toml)")
    p.add_argument("--state-dir", default=DEFAULT_STATE)


def tls_flags(p: argparse.ArgumentParser) -> None:
    """The operator's mutual-TLS credentials for a gateway (none: plaintext, dev mode)."""
    p.add_argument("--ca", default="", help="CA certificate of the gateway (mutual TLS)")
    p.add_argument("--cert", default="", help="the partner system's client certificate")
    p.add_argument("--key", default="", help="its private key")


def missing_node(args: argparse.Namespace, command: str) -> bool:
    """True, after saying so on stderr, when neither ``--config`` nor ``--region`` names the node
    that ``tongban <command>`` needs."""
    if args.region or args.config:
        return False
    print(f"tongban {command}: give --config or --region", file=sys.stderr)
    return True


def node_config(args: argparse.Namespace) -> Config:
    """The node config ``--config`` names, or the dev stack's config of ``--region``."""
    path = Path(args.config) if args.config else Path(args.state_dir) / args.region / "node.toml"
    return Config.load(path)


def tool_config(args: argparse.Namespace) -> Config:
    """The node config of a tool command; its logs go to stderr, errors only."""
    configure_logging(fmt="console", level="error", stream=sys.stderr)
    return node_config(args)


async def tool_nats(cfg: Config, tool: str) -> NATS:
    """A tool's connection to its region's NATS as the operator-tools user (``[nats]
    operator_nkey_seed``): quiet about its own disconnect at the end."""

    async def quiet() -> None:
        return None

    return await connect_nats(
        cfg, role=NatsRole.OPERATOR, name=f"tongban-{tool}-{cfg.region.code}", disconnected_cb=quiet
    )


def channel(address: str, *, ca: str, cert: str, key: str) -> grpc.Channel:
    """A channel to the gateway at ``address``: mutual TLS with the files ``ca``, ``cert`` and
    ``key`` (``--ca/--cert/--key``), else plaintext (dev mode).

    Raises:
        SystemExit: only some of the three are given, or one cannot be read (the message says which).
    """
    tls = (ca, cert, key)
    if not any(tls):
        return grpc.insecure_channel(address)
    if not all(tls):
        raise SystemExit("give --ca, --cert and --key together (mutual TLS)")
    pem = {}
    for flag, path in (("--ca", ca), ("--cert", cert), ("--key", key)):
        try:
            pem[flag] = Path(path).read_bytes()
        except OSError as exc:
            raise SystemExit(f"cannot read {flag} {path}: {exc.strerror or exc}") from None
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pem["--ca"], private_key=pem["--key"], certificate_chain=pem["--cert"]
    )
    return grpc.secure_channel(address, credentials)
