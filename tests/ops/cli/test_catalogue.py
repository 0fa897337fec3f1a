"""``tongban catalogue``: list, show, search, validate and publish, as an operator runs them."""

from __future__ import annotations

import json
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf import json_format

from tests.conftest import SZ, WX, Stack
from tests.e2e.cli import tongban
from tests.helpers import eventually
from tongban.core.catalogue import Catalogue
from tongban.core.catalogue_signing import read_unverified

HOUSING_FUND = {"ZFGJJTQ00001", "GJJDWKH00001"}


def write_catalogue(path: Path, revision: int, *, edit: object = None) -> Path:
    msg = Catalogue.load().to_proto()
    msg.revision = revision
    msg.version = f"cli.{revision}"
    if callable(edit):
        edit(msg)
    path.write_text(json_format.MessageToJson(msg, ensure_ascii=False), encoding="utf-8")
    return path


async def test_search_gong_ji_jin_finds_the_housing_fund_items() -> None:
    rc, out, err = await tongban("catalogue", "search", "公积金")
    assert rc == 0, err
    lines = out.splitlines()
    assert {line.split()[1] for line in lines[: len(HOUSING_FUND)]} == HOUSING_FUND
    assert all("公积金" in line for line in lines[: len(HOUSING_FUND)])


async def test_list_and_show() -> None:
    rc, out, err = await tongban("catalogue", "list", "--mode", "query")
    assert rc == 0, err
    assert "SBJFJLCX0001" in out and "YLBXZYJX0001" not in out
    rc, out, err = await tongban("catalogue", "show", "ZFGJJTQ00001")
    assert rc == 0, err
    assert "住房公积金提取" in out and "withdrawal_reason" in out and "answer fields:" in out
    rc, out, _ = await tongban("catalogue", "show", "ZFGJJTQ00001", "--json")
    assert json.loads(out)["code"] == "ZFGJJTQ00001"
    rc, _, err = await tongban("catalogue", "show", "NOSUCHITEM00")
    assert rc == 1 and "no item" in err


async def test_validate_names_every_bad_item_and_fails(tmp_path: Path) -> None:
    def break_two(msg: object) -> None:
        msg.items[0].fields[0].pattern = "(a+)+"  # type: ignore[attr-defined]
        msg.items[1].code = "bad code"  # type: ignore[attr-defined]

    bad = write_catalogue(tmp_path / "bad.json", 3, edit=break_two)
    rc, out, _ = await tongban("catalogue", "validate", str(bad))
    assert rc == 1
    assert "variable repeat inside another" in out and "the code must match" in out
    good = write_catalogue(tmp_path / "good.json", 3)
    rc, out, err = await tongban("catalogue", "validate", str(good))
    assert rc == 0, out + err
    assert "revision 3" in out
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json", encoding="utf-8")
    rc, out, _ = await tongban("catalogue", "validate", str(garbage))
    assert rc == 1 and "not protobuf JSON" in out and "Traceback" not in out


async def test_publish_to_a_running_stack(stack: Stack, tmp_path: Path) -> None:
    root_key = str(stack.state.root / "root.key")
    configs = [arg for region in (SZ, WX) for arg in ("--config", str(stack.state.config_path(region)))]
    source = write_catalogue(
        tmp_path / "v5.json", 5, edit=lambda m: setattr(m.items[0], "description", "缴费记录查询")
    )
    out_file = tmp_path / "v5.signed"
    rc, out, err = await tongban(
        "catalogue", "publish", str(source), "--root-key", root_key, *configs, "--out", str(out_file)
    )
    assert rc == 0, err
    assert f"TB_CATALOGUE_{SZ}" in out and f"TB_CATALOGUE_{WX}" in out
    assert read_unverified(out_file.read_bytes()).revision == 5
    watchers = [
        w
        for node in stack.nodes.values()
        for w in (node.gateway.catalogue_watch, node.connector.catalogue_watch)  # type: ignore[union-attr]
    ]
    assert len(watchers) == 4 and all(w is not None for w in watchers)
    # (The in-process stack's nodes share one catalogue object: whichever watcher sees it first
    # adopts it for all. tests/e2e/test_catalogue_live.py shows it process by process.)
    await eventually(
        lambda: all(w.catalogue.revision == 5 for w in watchers),  # type: ignore[union-attr]
        what="every gateway and connector runs revision 5",
    )
    # A partner sees it at once, through the gateway.
    gateway = stack.nodes[SZ].address
    rc, out, err = await tongban("catalogue", "list", "--gateway", gateway, "--region", WX)
    assert rc == 0, err
    assert "revision 5" in out
    rc, out, err = await tongban("catalogue", "search", "缴费记录", "--gateway", gateway)
    assert rc == 0, err
    assert out.splitlines()[0].split()[1] == "SBJFJLCX0001"

    # The same signed file again is harmless; another document of the same revision is refused.
    rc, _, err = await tongban("catalogue", "publish", str(out_file), *configs)
    assert rc == 0, err
    rc, _, err = await tongban("catalogue", "publish", str(source), "--root-key", root_key, *configs)
    assert rc == 2 and "holds revision 5 already" in err
    # Signed by another key: refused before it reaches any bucket.
    other = tmp_path / "other.pem"
    other.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    newer = write_catalogue(tmp_path / "v6.json", 6)
    rc, _, err = await tongban("catalogue", "publish", str(newer), "--root-key", str(other), *configs)
    assert rc == 2 and "CATALOGUE_SIGNATURE" in err and "Traceback" not in err
