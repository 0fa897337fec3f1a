"""The ledger tools as an operator and an auditor run them (child processes).

A delivered request's receipt, exported with an inclusion proof and the region's signed checkpoint,
verifies offline from the bundle alone; any edit of the bundle is named. After a checkpoint was
signed, editing, deleting, reordering or truncating entries in the SQLite file makes
`tongban ledger verify` fail and name the first bad index.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.conftest import QD, SZ, WX, Stack, stop_stack
from tests.e2e.cli import tongban
from tests.e2e.requests import pension
from tests.helpers import eventually
from tongban.core import subjects
from tongban.runtime import live_registry


async def _delivered(stack: Stack, tmp_path: Path, n: int = 3) -> tuple[str, Path]:
    """n queries from Shenzhen to Wuxi; the last one's message id and its receipt file."""
    stub = stack.stub(SZ)
    for _ in range(n):
        resp = await stub.Query(pension(), timeout=10)
    receipt = tmp_path / "receipt.bin"
    receipt.write_bytes(resp.receipt)
    return resp.message_id, receipt


async def test_receipt_and_inclusion_proof_verify_offline_from_the_bundle(
    stack: Stack, tmp_path: Path
) -> None:
    message_id, receipt = await _delivered(stack, tmp_path)
    wx_cfg, bundle = str(stack.state.config_path(WX)), tmp_path / "bundle.json"
    rc, out, err = await tongban(
        "ledger",
        "export",
        "--config",
        wx_cfg,
        "--message-id",
        message_id,
        "--receipt",
        str(receipt),
        "-o",
        str(bundle),
    )
    assert rc == 0, err
    assert "2 entries, 1 receipts" in out
    root_pub = str(stack.state.root / "root.pub")

    rc, out, err = await tongban("ledger", "check-bundle", str(bundle), "--root-key", root_pub)
    assert rc == 0, out + err
    assert "trust registry: signed by the pinned root key" in out
    assert (
        f"receipt: {WX} recorded {message_id} at leaf" in out
        and "bundle OK: 2 entries proven, 1 receipts" in out
    )

    doc = json.loads(bundle.read_text())
    received = doc["entries"][0]

    def edited(change: object) -> Path:
        copy = json.loads(bundle.read_text())
        change(copy)  # type: ignore[operator]
        path = tmp_path / "edited.json"
        path.write_text(json.dumps(copy))
        return path

    cases = {
        "its fields do not give its entry bytes": lambda d: d["entries"][0].update(detail="edited"),
        "inclusion proof fails": lambda d: (
            d["entries"][0]["inclusion_proof"].reverse()
            if len(d["entries"][0]["inclusion_proof"]) > 1
            else d["entries"][0]["inclusion_proof"].append(d["entries"][0]["inclusion_proof"][0])
        ),
        f"leaf {received['index']} is not a verified entry": lambda d: d["entries"].pop(0),
        "checkpoint": lambda d: d.update(checkpoint=d["checkpoint"].replace("\n", "\n\n", 1)),
    }
    for expected, change in cases.items():
        rc, out, _ = await tongban("ledger", "check-bundle", str(edited(change)), "--root-key", root_pub)
        assert rc == 1 and "FAILED:" in out and expected in out, (expected, out)
    # Without the authority's key the bundle would vouch for itself: refused unless asked for.
    rc, _, err = await tongban("ledger", "check-bundle", str(bundle))
    assert rc == 2 and "--root-key" in err
    # Wuxi's signing key revoked in the (genuinely root-signed) registry of the bundle.
    root = serialization.load_pem_private_key((stack.state.root / "root.key").read_bytes(), password=None)
    assert isinstance(root, Ed25519PrivateKey)

    def revoke_wuxi(d: dict[str, object]) -> None:
        signed = base64.b64decode(str(d["registry"]))
        revoked = live_registry.edit_signed(
            signed,
            root,
            lambda doc: [setattr(k, "revoked", True) for r in doc.regions if r.code == WX for k in r.keys],
        )
        d["registry"] = base64.b64encode(revoked).decode()

    rc, out, _ = await tongban("ledger", "check-bundle", str(edited(revoke_wuxi)), "--root-key", root_pub)
    assert rc == 1 and f"of {WX} is revoked in the registry" in out
    # A registry signed by another root: the keys cannot be trusted.
    rc, out, _ = await tongban("ledger", "check-bundle", str(bundle), "--root-key", "00" * 32)
    assert rc == 1 and "trust registry" in out

    rc, out, err = await tongban("ledger", "prove", message_id, "--config", wx_cfg)
    assert rc == 0, err
    assert f"entry {received['index']} RECEIVED {message_id}" in out and "proof[0]" in out
    assert f"tongban.example/ledger/{WX}" in out or "ledger/" in out  # the signed note follows


def _tamper(path: Path, sql: str) -> None:
    """What someone with file access can do: drop the append-only triggers, then edit."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("DROP TRIGGER IF EXISTS entries_no_update")
        conn.execute("DROP TRIGGER IF EXISTS entries_no_delete")
        conn.execute(sql)
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("statements", "expected"),
    [
        (["UPDATE entries SET detail = 'edited' WHERE idx = 2"], "BROKEN at index 2"),
        (["DELETE FROM entries WHERE idx = 3"], "BROKEN at index 3"),
        (
            [  # swap entries 1 and 2
                "UPDATE entries SET idx = 1000 WHERE idx = 1",
                "UPDATE entries SET idx = 1 WHERE idx = 2",
                "UPDATE entries SET idx = 2 WHERE idx = 1000",
            ],
            "BROKEN at index 1",
        ),
        (["DELETE FROM entries WHERE idx >= 4"], "TRUNCATED: 4 entries, but checkpoint signed at 8"),
    ],
    ids=["edit", "delete", "reorder", "truncate"],
)
async def test_verify_names_the_first_bad_index(
    stack: Stack, tmp_path: Path, statements: list[str], expected: str
) -> None:
    await _delivered(stack, tmp_path, n=4)  # 8 entries in Wuxi's ledger
    wx_cfg = str(stack.state.config_path(WX))
    rc, out, err = await tongban("ledger", "export", "--config", wx_cfg, "-o", str(tmp_path / "all.json"))
    assert rc == 0, err  # signs a checkpoint of the ledger as it is
    rc, out, err = await tongban("ledger", "verify", "--config", wx_cfg)
    assert rc == 0 and "Merkle tree matches the signed checkpoint of 8 entries" in out, out + err
    await stop_stack(stack)
    path = stack.nodes[WX].cfg.path(stack.nodes[WX].cfg.ledger.path)
    for sql in statements:
        _tamper(path, sql)
    rc, out, err = await tongban("ledger", "verify", "--config", wx_cfg)
    assert rc == 1 and expected in out, out + err


async def test_sender_proves_a_delivery_from_its_receipt_and_a_witnessed_checkpoint(
    stack: Stack, tmp_path: Path
) -> None:
    """Shenzhen holds Wuxi's receipt and has witnessed Wuxi's checkpoint: it fetches the inclusion
    proof from Wuxi over NATS and checks it against that checkpoint."""
    message_id, _ = await _delivered(stack, tmp_path, n=1)
    sz_cfg = str(stack.state.config_path(SZ))
    rc, out, _ = await tongban("ledger", "check-receipt", message_id, "--config", sz_cfg)
    assert rc == 1 and "receipt: 320200 recorded" in out  # nothing witnessed that covers it yet
    wx, sz = stack.nodes[WX].gateway, stack.nodes[SZ].gateway
    assert wx is not None and wx.publisher is not None and sz is not None and sz.witness is not None
    signed = await wx.publisher.signer.sign_now()
    await wx.publisher.publish(signed)
    witness = sz.witness
    await eventually(
        lambda: (cp := witness.latest(WX)) is not None and cp.size == signed.checkpoint.size,
        what="Shenzhen witnesses Wuxi's checkpoint",
    )
    rc, out, err = await tongban("ledger", "check-receipt", message_id, "--config", sz_cfg)
    assert rc == 0, out + err
    assert f"in {WX}'s ledger of {signed.checkpoint.size} entries" in out and "delivery proven" in out
    rc, out, _ = await tongban("ledger", "check-receipt", "01NOSUCHMESSAGE0000000000", "--config", sz_cfg)
    assert rc == 1
    # Qingdao may not read Wuxi's entries about Shenzhen's traffic through the proof subject.
    leaf = (await stack.nodes[WX].ledger.by_message_id(message_id))[0].index
    qd = await stack.nats(QD)
    try:
        answer = await qd.request(
            subjects.ledger_proof_subject(WX),
            json.dumps({"leaf_index": leaf, "tree_size": signed.checkpoint.size}).encode(),
            timeout=5,
        )
    finally:
        await qd.close()
    assert json.loads(answer.data) == {"error": f"leaf {leaf} is not about region {QD}'s traffic"}
