"""The registry authority's edits: regions, provided services, access rules, each checked."""

from __future__ import annotations

import pytest

from tongban.core import registry_edits as edits
from tongban.core.errors import Reason, RegistryError
from tongban.v1 import registry_pb2

SZ, WX, QD = "440300", "320200", "370200"
CATALOGUE = {"SBJFJLCX0001", "ZFGJJTQ00001"}


def _doc() -> registry_pb2.TrustRegistry:
    doc = registry_pb2.TrustRegistry(version=7)
    edits.add_region(doc, SZ, "深圳市")
    edits.add_region(doc, WX, "无锡市", gateway_address="gw.wuxi.example:8443")
    return doc


def test_a_region_joins_provides_and_is_allowed_then_leaves_with_its_rules() -> None:
    doc = _doc()
    edits.add_region(doc, QD, "青岛市")
    assert edits.add_service(doc, QD, "SBJFJLCX0001", catalogue=CATALOGUE)
    assert not edits.add_service(doc, QD, "SBJFJLCX0001", catalogue=CATALOGUE)  # once
    assert edits.allow(doc, SZ, QD, service="SBJFJLCX0001")
    assert not edits.allow(doc, SZ, QD, service="SBJFJLCX0001")  # once
    assert edits.allow(doc, QD, WX, caller_system="qd-ywtb")
    assert [
        (r.caller_region, r.caller_system, r.service_code, r.provider_region) for r in doc.access_rules
    ] == [
        (SZ, "*", "SBJFJLCX0001", QD),
        (QD, "qd-ywtb", "*", WX),
    ]
    assert edits.remove_region(doc, QD) == 2
    assert [r.code for r in doc.regions] == [SZ, WX] and list(doc.access_rules) == []


def test_deny_removes_exactly_the_rule_named() -> None:
    doc = _doc()
    edits.allow(doc, SZ, WX)
    edits.allow(doc, SZ, WX, caller_system="szgov-ywtb")
    edits.deny(doc, SZ, WX, caller_system="szgov-ywtb")
    assert [r.caller_system for r in doc.access_rules] == ["*"]
    with pytest.raises(RegistryError, match="no access rule with exactly these terms"):
        edits.deny(doc, SZ, WX, caller_system="szgov-ywtb")


@pytest.mark.parametrize(
    ("edit", "reason", "match"),
    [
        (lambda d: edits.add_region(d, SZ, "again"), Reason.REGION_EXISTS, "already in"),
        (lambda d: edits.add_region(d, "999999", "x"), Reason.REGISTRY_INVALID, "not a GB/T 2260"),
        (lambda d: edits.add_region(d, "440300001", "x"), Reason.REGISTRY_INVALID, "6-digit"),
        (lambda d: edits.add_region(d, QD, ""), Reason.REGISTRY_INVALID, "printable"),
        (lambda d: edits.add_region(d, QD, "青岛\n市"), Reason.REGISTRY_INVALID, "printable"),
        (
            lambda d: edits.add_region(d, QD, "青岛市", gateway_address="qd:99999"),
            Reason.REGISTRY_INVALID,
            "host:port",
        ),
        (lambda d: edits.remove_region(d, QD), Reason.REGION_UNKNOWN, "not in the trust registry"),
        (
            lambda d: edits.add_service(d, QD, "SBJFJLCX0001", catalogue=CATALOGUE),
            Reason.REGION_UNKNOWN,
            "370200",
        ),
        (
            lambda d: edits.add_service(d, WX, "NOSUCHITEM01", catalogue=CATALOGUE),
            Reason.REGISTRY_INVALID,
            "catalogue",
        ),
        (
            lambda d: edits.allow(d, SZ, WX, service="SBJFJLCX0001"),
            Reason.REGISTRY_INVALID,
            "add the service first",
        ),
        (lambda d: edits.allow(d, SZ, WX, caller_system="Bad System"), Reason.REGISTRY_INVALID, "system id"),
        (lambda d: edits.allow(d, QD, WX), Reason.REGION_UNKNOWN, "370200"),
    ],
)
def test_each_bad_edit_is_refused_and_changes_nothing(edit, reason: Reason, match: str) -> None:  # type: ignore[no-untyped-def]
    doc = _doc()
    before = doc.SerializeToString()
    with pytest.raises(RegistryError, match=match) as err:
        edit(doc)
    assert err.value.reason == reason
    assert doc.SerializeToString() == before
