"""``tongban region init``: everything a new region makes for itself before it joins the exchange.

Into one directory, and nothing secret out of it:

- ``keys/``: the region's signing and sealing keys and its correlation key (mode 0600);
- ``tls/gateway.key`` (0600) and ``tls/gateway.csr``: the gateway's TLS key and a certificate signing
  request for its address, for the province's CA;
- ``gateway.toml`` and ``connector.toml``: production-mode configs (no dev mode, mutual TLS, NKey
  logins), each setting they set explained in a comment; ``tongban config check FILE`` prints every
  other setting's default and what is still missing;
- ``registration.json``: the request for the registry authority (public keys, the services offered,
  the gateway's address), signed with the new signing key (:mod:`tongban.core.registration`).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from ledger.files import write_atomically
from tongban.core import identifiers
from tongban.core.errors import ConfigError
from tongban.core.keys import SealingKey, SigningKey
from tongban.core.registration import Registration
from tongban.runtime import certs
from tongban.runtime.keyfiles import save_sealing_key, save_signing_key

__all__ = ["RegionFiles", "init_region"]


@dataclass(frozen=True)
class RegionFiles:
    """What :func:`init_region` wrote."""

    directory: Path
    signing_key_id: str
    sealing_key_id: str
    request: Path
    csr: Path
    configs: tuple[Path, Path]


def init_region(
    out: Path,
    region: str,
    name: str,
    *,
    gateway_address: str,
    services: tuple[str, ...] = (),
    nats_url: str = "tls://127.0.0.1:4222",
) -> RegionFiles:
    """Make a new region's keys, configs, CSR and registration request in ``out``.

    Raises:
        ConfigError: a bad region code or address, or ``out`` holds a region already (nothing is
            overwritten).
    """
    try:
        identifiers.check_region_code(region)
    except ValueError as exc:
        raise ConfigError(f"{region!r} is not a GB/T 2260 region code") from exc
    host, sep, port = gateway_address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"--gateway-address {gateway_address!r} is not host:port")
    if (out / "keys").exists() or (out / "registration.json").exists():
        raise ConfigError(f"{out} holds a region already: nothing is overwritten")
    signing, sealing = SigningKey.generate(region), SealingKey.generate(region)
    save_signing_key(out / "keys" / "signing.pem", signing)
    save_sealing_key(out / "keys" / "sealing.pem", sealing)
    write_atomically(out / "keys" / "correlation.key", (secrets.token_hex(32) + "\n").encode(), mode=0o600)
    key_pem, csr_pem = certs.server_request([host], f"tongban gateway {region}")
    write_atomically(out / "tls" / "gateway.key", key_pem, mode=0o600)
    write_atomically(out / "tls" / "gateway.csr", csr_pem)
    request = Registration.of(
        region, name, signing, sealing, gateway_address=gateway_address, services=services
    )
    write_atomically(out / "registration.json", request.signed(signing))
    gateway, connector = out / "gateway.toml", out / "connector.toml"
    fill = {"region": region, "name": name, "nats_url": nats_url}
    write_atomically(gateway, (_COMMON.format(role="gateway", **fill) + _GATEWAY.format(port=port)).encode())
    write_atomically(connector, (_COMMON.format(role="connector", **fill) + _CONNECTOR).encode())
    return RegionFiles(
        out,
        signing.key_id,
        sealing.key_id,
        out / "registration.json",
        out / "tls" / "gateway.csr",
        (gateway, connector),
    )


_COMMON = """\
# tongban node config, written by `tongban region init`. `tongban config check FILE` prints every
# setting (with its default) and every problem left: files still to be placed, exposed keys.

[region]
# GB/T 2260 code and name of this region.
code = "{region}"
name = "{name}"

[nats]
# The region's own nats-server cluster (deploy/nats from `tongban nats-config`): TLS first.
servers = ["{nats_url}"]
# CA of the region's nats-servers' certificates (from the province's `tongban nats-config`).
tls_ca = "secrets/nats-ca.pem"
# This process's NKey user seed (mode 0600), from `tongban nats-config --secrets-dir`.
{role}_nkey_seed = "secrets/{role}.nk"

[keys]
# This region's Ed25519 signing key, X25519 sealing key and correlation key (made here, mode 0600).
signing_key = "keys/signing.pem"
sealing_key = "keys/sealing.pem"
correlation_key = "keys/correlation.key"

[registry]
# The signed trust registry the registry authority sends back once it applied registration.json,
# and the authority's root public key (hex) it is signed with.
file = "registry.signed"
root_keys = ["root.pub"]

[ledger]
# The delivery ledger; for several replicas use backend = "postgres" with a dsn.
backend = "sqlite"
path = "ledger.sqlite"

[log]
format = "json"
level = "info"

"""

_GATEWAY = """\
[gateway]
# Partners connect here with mutual TLS: the certificate the province's CA issues for tls/gateway.csr,
# and the CA partners' client certificates are issued by.
listen = "0.0.0.0:{port}"
tls_cert = "tls/gateway.crt"
tls_key = "tls/gateway.key"
client_ca = "tls/partners-ca.pem"

[metrics]
# /metrics, /livez and /readyz of the gateway process.
gateway_listen = "127.0.0.1:9464"
"""

_CONNECTOR = """\
[metrics]
# /metrics, /livez and /readyz of the connector process.
connector_listen = "127.0.0.1:9465"

# The region's back ends: one [backends.<name>] per system, one [services.<item code>] per catalogue
# item this region answers (README "Connect your systems", docs/adapters/). For example:
#
# [backends.renshe]
# kind = "http"
# base_url = "https://api.rs.example.gov.cn/v1"
#
# [services.SBJFJLCX0001]
# backend = "renshe"
# path = "/persons/{applicant.id}/contributions"
"""
