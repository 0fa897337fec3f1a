"""The registry authority's edits of a trust registry document: regions, the services they provide,
and the access rules between them.

Each function changes a ``TrustRegistry`` in place and checks what it is given first; the caller
(``tongban registry …`` through :func:`tongban.runtime.live_registry.edit_signed`) verifies the
document it starts from, raises the version and signs the result. Keys are added and revoked by
:func:`tongban.runtime.live_registry.add_key` and ``revoke_key``.
"""

from __future__ import annotations

import re
from collections.abc import Container

from tongban.core import identifiers
from tongban.core.errors import Reason, RegistryError
from tongban.v1 import registry_pb2

__all__ = ["add_region", "add_service", "allow", "deny", "remove_region"]

ANY = "*"
"""In an access rule: any caller system, or any service."""

_ADDRESS = re.compile(r"[A-Za-z0-9.\-]{1,253}:[0-9]{1,5}")
_SYSTEM = re.compile(r"[a-z0-9][a-z0-9\-_.]{0,63}")
_MAX_NAME = 64


def _find(doc: registry_pb2.TrustRegistry, code: str) -> registry_pb2.Region | None:
    return next((r for r in doc.regions if r.code == code), None)


def _region(doc: registry_pb2.TrustRegistry, code: str) -> registry_pb2.Region:
    region = _find(doc, code)
    if region is None:
        raise RegistryError(f"region {code} is not in the trust registry", reason=Reason.REGION_UNKNOWN)
    return region


def add_region(doc: registry_pb2.TrustRegistry, code: str, name: str, *, gateway_address: str = "") -> None:
    """A new participating region, with no keys, services or rules yet.

    Raises:
        RegistryError: a malformed code, name or address (REGISTRY_INVALID), or the region exists
            (REGION_EXISTS).
    """
    try:
        identifiers.check_region_code(code)
    except ValueError as exc:
        raise RegistryError(
            f"{code!r} is not a GB/T 2260 region code", reason=Reason.REGISTRY_INVALID
        ) from exc
    if len(code) != 6:
        raise RegistryError("a participating region has a 6-digit code", reason=Reason.REGISTRY_INVALID)
    if not name or len(name) > _MAX_NAME or not name.isprintable():
        raise RegistryError(
            f"a region's name is 1-{_MAX_NAME} printable characters", reason=Reason.REGISTRY_INVALID
        )
    if gateway_address:
        _check_address(gateway_address)
    if _find(doc, code) is not None:
        raise RegistryError(f"region {code} is already in the trust registry", reason=Reason.REGION_EXISTS)
    doc.regions.append(registry_pb2.Region(code=code, name=name, gateway_address=gateway_address))


def _check_address(address: str) -> None:
    if not _ADDRESS.fullmatch(address) or not 0 < int(address.rpartition(":")[2]) <= 65535:
        raise RegistryError(f"{address!r} is not host:port", reason=Reason.REGISTRY_INVALID)


def remove_region(doc: registry_pb2.TrustRegistry, code: str) -> int:
    """Take ``code`` out, with every access rule naming it (as caller or provider); the number of
    rules removed.

    Raises:
        RegistryError: REGION_UNKNOWN.
    """
    region = _region(doc, code)
    doc.regions.remove(region)
    keep = [r for r in doc.access_rules if code not in (r.caller_region, r.provider_region)]
    removed = len(doc.access_rules) - len(keep)
    del doc.access_rules[:]
    doc.access_rules.extend(keep)
    return removed


def add_service(
    doc: registry_pb2.TrustRegistry, region: str, service: str, *, catalogue: Container[str]
) -> bool:
    """``region`` provides catalogue item ``service`` (False: it did already).

    Raises:
        RegistryError: REGION_UNKNOWN, or a code the catalogue does not have (REGISTRY_INVALID).
    """
    r = _region(doc, region)
    if service not in catalogue:
        raise RegistryError(f"{service!r} is not a catalogue item", reason=Reason.REGISTRY_INVALID)
    if service in r.provided_services:
        return False
    r.provided_services.append(service)
    return True


def _rule(
    doc: registry_pb2.TrustRegistry,
    caller_region: str,
    caller_system: str,
    service: str,
    provider_region: str,
) -> registry_pb2.AccessRule:
    _region(doc, caller_region)
    provider = _region(doc, provider_region)
    if caller_system != ANY and not _SYSTEM.fullmatch(caller_system):
        raise RegistryError(f"{caller_system!r} is not a system id (or *)", reason=Reason.REGISTRY_INVALID)
    if service != ANY and service not in provider.provided_services:
        raise RegistryError(
            f"region {provider_region} does not provide {service}: add the service first",
            reason=Reason.REGISTRY_INVALID,
        )
    return registry_pb2.AccessRule(
        caller_region=caller_region,
        caller_system=caller_system,
        service_code=service,
        provider_region=provider_region,
    )


def allow(
    doc: registry_pb2.TrustRegistry,
    caller_region: str,
    provider_region: str,
    *,
    caller_system: str = ANY,
    service: str = ANY,
) -> bool:
    """An access rule: ``caller_region``'s ``caller_system`` may call ``service`` of
    ``provider_region`` (False: that rule exists already).

    Raises:
        RegistryError: a region not in the registry, a malformed system id, or a service the provider
            does not provide.
    """
    rule = _rule(doc, caller_region, caller_system, service, provider_region)
    if rule in doc.access_rules:
        return False
    doc.access_rules.append(rule)
    return True


def deny(
    doc: registry_pb2.TrustRegistry,
    caller_region: str,
    provider_region: str,
    *,
    caller_system: str = ANY,
    service: str = ANY,
) -> None:
    """Remove the access rule with exactly these terms (a narrower or wider rule stays).

    Raises:
        RegistryError: no such rule (REGISTRY_INVALID), or an unknown region.
    """
    _region(doc, caller_region)
    _region(doc, provider_region)
    rule = registry_pb2.AccessRule(
        caller_region=caller_region,
        caller_system=caller_system,
        service_code=service,
        provider_region=provider_region,
    )
    if rule not in doc.access_rules:
        raise RegistryError("no access rule with exactly these terms", reason=Reason.REGISTRY_INVALID)
    doc.access_rules.remove(rule)
