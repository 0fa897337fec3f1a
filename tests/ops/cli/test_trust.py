"""A key rotation done with the command line, as a region operator and the registry authority would,
while the stack runs: keys new → registry add-key → registry publish (both regions) → revoke."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import SZ, WX, Stack
from tests.e2e.cli import tongban
from tests.e2e.requests import pension
from tests.helpers import eventually


async def test_rotation_with_the_cli(stack: Stack) -> None:
    sz_cfg = str(stack.state.config_path(SZ))
    registry = str(stack.state.root / "registry.signed")
    root_key = str(stack.state.root / "root.key")
    gateway = stack.nodes[SZ].gateway
    assert gateway is not None
    old_kid = gateway.secrets.signing.key_id

    rc, out, err = await tongban("keys", "new", "--use", "signing", "--config", sz_cfg)
    assert rc == 0, err
    m = re.search(r"--public-key ([0-9a-f]{64})", out)
    assert m, out
    new_kid = out.split()[0]
    assert new_kid.startswith(f"{SZ}.sig.") and new_kid != old_kid

    rc, out, err = await tongban(
        "registry", "add-key", "--file", registry, "--root-key", root_key,
        "--region", SZ, "--use", "signing", "--public-key", m[1], "--overlap-s", "600",
    )  # fmt: skip
    assert rc == 0, err
    assert f"added {new_kid}" in out
    for region in (SZ, WX):
        rc, out, err = await tongban(
            "registry", "publish", "--file", registry, "--config", str(stack.state.config_path(region))
        )
        assert rc == 0, err
        assert f"TB_REGISTRY_{region}" in out

    await eventually(
        lambda: gateway.secrets.signing.key_id == new_kid, what="Shenzhen signs with the new key"
    )
    assert (await stack.stub(SZ).Query(pension(), timeout=10)).responder_region == WX

    rc, out, err = await tongban(
        "registry", "revoke", "--file", registry, "--root-key", root_key, "--key-id", old_kid
    )
    assert rc == 0, err
    rc, out, err = await tongban("registry", "show", "--file", registry)
    assert rc == 0, err
    assert re.search(rf"{re.escape(old_kid)} .* REVOKED", out), out
    assert re.search(rf"{re.escape(new_kid)} .* ok", out), out
    for region in (SZ, WX):
        rc, _, err = await tongban(
            "registry", "publish", "--file", registry, "--config", str(stack.state.config_path(region))
        )
        assert rc == 0, err
    connector = stack.nodes[WX].connector
    assert connector is not None
    await eventually(lambda: connector.registry.keys[old_kid].revoked, what="Wuxi holds the revocation")
    assert (await stack.stub(SZ).Query(pension(), timeout=10)).responder_region == WX


async def test_publishing_a_forged_registry_is_refused_by_the_cli(stack: Stack, tmp_path: Path) -> None:
    forged = tmp_path / "forged.signed"
    forged.write_bytes(b"\x0a\x03abc")
    rc, _, err = await tongban(
        "registry", "publish", "--file", str(forged), "--config", str(stack.state.config_path(WX))
    )
    assert rc == 2
    assert "error:" in err and "Traceback" not in err
