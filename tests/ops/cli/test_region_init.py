"""``tongban region init`` then ``tongban registry apply``: a new region (青岛 370200) makes its keys,
production configs, TLS request and signed registration request; the authority registers it from
the request alone; an edited request is refused."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

from cryptography import x509

from tests.e2e.cli import tongban
from tongban.core.keys import load_signing_key
from tongban.core.registry import Registry
from tongban.ops.config_check import check
from tongban.ops.devstate import DEV_REGIONS, init_state
from tongban.runtime.config import Config
from tongban.runtime.node import parse_public_key

QD = "370200"


async def _init(out: Path) -> tuple[int, str, str]:
    args = ["region", "init", "--region", QD, "--name", "青岛市", "--out", str(out)]
    args += ["--gateway-address", "gw.qd.example.gov.cn:8443"]
    return await tongban(*args, "--service", "SBJFJLCX0001", "--service", "ZFGJJTQ00001")


async def test_init_writes_keys_configs_csr_and_a_request_and_nothing_secret_leaves(tmp_path: Path) -> None:
    out = tmp_path / "qd"
    code, printed, err = await _init(out)
    assert code == 0, err
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert files == {
        "keys/signing.pem",
        "keys/sealing.pem",
        "keys/correlation.key",
        "tls/gateway.key",
        "tls/gateway.csr",
        "gateway.toml",
        "connector.toml",
        "registration.json",
    }
    for private in ("keys/signing.pem", "keys/sealing.pem", "keys/correlation.key", "tls/gateway.key"):
        assert stat.S_IMODE((out / private).stat().st_mode) == 0o600, private
    request = (out / "registration.json").read_text()
    assert "PRIVATE" not in request and "PRIVATE" not in (out / "tls" / "gateway.csr").read_text()
    csr = x509.load_pem_x509_csr((out / "tls" / "gateway.csr").read_bytes())
    assert csr.is_signature_valid
    assert csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    ) == ["gw.qd.example.gov.cn"]

    gateway, connector = (
        Config.load(out / "gateway.toml", env={}),
        Config.load(out / "connector.toml", env={}),
    )
    assert (gateway.region.code, gateway.gateway.dev_mode, gateway.gateway.listen) == (
        QD,
        False,
        "0.0.0.0:8443",
    )
    assert gateway.gateway.tls_key == "tls/gateway.key" and connector.nats.connector_nkey_seed
    assert "registry.signed" in printed and "tongban config check" in printed
    # What is still to come is named by the check: the registry, the certificates, the NATS secrets.
    problems = check(out / "gateway.toml", network=False).problems
    for pending in (
        "[registry] file",
        "[gateway] tls_cert",
        "[gateway] client_ca",
        "[nats] gateway_nkey_seed",
    ):
        assert any(p.startswith(pending) for p in problems), pending
    assert not any(p.startswith(("[keys]", "[gateway] tls_key")) for p in problems)  # made, private

    code, _, err = await _init(out)
    assert code == 2 and "holds a region already" in err


async def test_the_authority_registers_the_region_from_its_request(tmp_path: Path) -> None:
    out = tmp_path / "qd"
    assert (await _init(out))[0] == 0
    state = init_state(tmp_path / "authority", DEV_REGIONS)
    reg, root = state.root / "registry.signed", state.root / "root.key"
    roots = [parse_public_key((state.root / "root.pub").read_text())]
    before = Registry.from_signed(reg.read_bytes(), roots).version

    code, printed, err = await tongban(
        "registry", "apply", str(out / "registration.json"), "--file", str(reg), "--root-key", str(root)
    )
    assert code == 0, err
    registry = Registry.from_signed(reg.read_bytes(), roots)
    assert registry.version == before + 1 and f"registered {QD} 青岛市" in printed
    region = registry.region(QD)
    assert region is not None and region.gateway_address == "gw.qd.example.gov.cn:8443"
    assert list(region.provided_services) == ["SBJFJLCX0001", "ZFGJJTQ00001"]
    assert {k.use for k in region.keys} == {1, 2} and not any(k.revoked for k in region.keys)

    # The region's own key checks out against what the registry now lists.
    signing = next(k for k in region.keys if k.use == 1)
    key = load_signing_key(out / "keys" / "signing.pem", QD)
    assert key.public_raw == signing.public_key and key.key_id == signing.key_id


async def test_an_edited_request_is_refused_and_the_registry_stays(tmp_path: Path) -> None:
    out = tmp_path / "qd"
    assert (await _init(out))[0] == 0
    outer = json.loads((out / "registration.json").read_text())
    document = json.loads(base64.b64decode(outer["document"]))
    document["gateway_address"] = "attacker.example:443"  # rerouted on its way to the authority
    outer["document"] = base64.b64encode(
        json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    ).decode()
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(outer))
    state = init_state(tmp_path / "authority", DEV_REGIONS)
    reg = state.root / "registry.signed"
    before = reg.read_bytes()
    code, _, err = await tongban(
        "registry", "apply", str(edited), "--file", str(reg), "--root-key", str(state.root / "root.key")
    )
    assert code == 2 and "not signed by the signing key it names" in err
    assert reg.read_bytes() == before
