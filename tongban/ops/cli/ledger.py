"""``tongban ledger verify | prove | export | check-receipt | check-bundle``: a region's ledger,
checked and proven.

- ``verify`` recomputes the hash chain and the Merkle tree from the entries alone, and checks the
  region's last signed checkpoint against them (signature, and the root of the tree at its size):
  an edited, deleted, reordered or truncated entry, or a rewritten log, names the first bad index.
- ``prove <message-id>`` prints the message's entries with inclusion proofs against a checkpoint.
- ``export`` writes a self-contained evidence bundle (tongban/runtime/bundle.py) for some or all entries.
- ``check-receipt <message-id>`` proves a delivery: our receipt, and the receiving region's inclusion
  proof against its checkpoint we witnessed.
- ``check-bundle`` verifies a bundle offline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.cases import CaseStore
from gateway.peer_ledger import fetch_proven_entry
from ledger import Event, LedgerError, verify_store
from ledger.checkpoint import CheckpointError, origin_of, parse_and_verify, read_note
from ledger.checkpoint_signer import CheckpointSigner
from ledger.files import write_atomically
from ledger.tree import LedgerTree
from ledger.verify import verify_sqlite_file
from tongban.core.envelope import EnvelopeRejected
from tongban.core.receipts import verify_receipt
from tongban.ops.cli.common import Subparsers, missing_node, node_flags, tool_config, tool_nats
from tongban.runtime.bundle import check_bundle, make_bundle
from tongban.runtime.config import Config
from tongban.runtime.ledgers import store_for
from tongban.runtime.node import load_registry, load_secrets, parse_public_key
from tongban.v1 import registry_pb2


def add_parsers(sub: Subparsers) -> None:
    lg = sub.add_parser("ledger", help="a region's ledger: verify, prove, export, check a bundle")
    lsub = lg.add_subparsers(dest="ledger_command", required=True)
    v = lsub.add_parser(
        "verify", help="recompute a region's hash chain and Merkle tree and check its last signed checkpoint"
    )
    v.add_argument(
        "--file", default="", help="a SQLite ledger file: its hash chain only (no tree, no checkpoint)"
    )
    node_flags(v)
    v.set_defaults(func=_verify)

    pr = lsub.add_parser("prove", help="inclusion proofs of a message's entries against a signed checkpoint")
    pr.add_argument("message_id")
    pr.add_argument("--json", action="store_true", help="print the evidence bundle instead of text")
    node_flags(pr)
    pr.set_defaults(func=_prove)

    ex = lsub.add_parser(
        "export", help="write a self-contained evidence bundle (entries, proofs, checkpoint, keys)"
    )
    ex.add_argument("--out", "-o", required=True, help="bundle file to write (JSON)")
    ex.add_argument("--message-id", action="append", default=[], help="only this message's entries (repeat)")
    ex.add_argument("--receipt", action="append", default=[], help="a SignedReceipt file to include (repeat)")
    node_flags(ex)
    ex.set_defaults(func=_export)

    cr = lsub.add_parser(
        "check-receipt",
        help="prove a delivery: our receipt for a message, an inclusion proof from the receiving region, "
        "checked against its checkpoint we witnessed",
    )
    cr.add_argument("message_id")
    node_flags(cr)
    cr.set_defaults(func=_check_receipt)

    cb = lsub.add_parser("check-bundle", help="verify an evidence bundle offline")
    cb.add_argument("bundle")
    cb.add_argument(
        "--root-key", default="", help="the registry authority's public key (hex, or a file of hex)"
    )
    cb.add_argument(
        "--allow-unpinned",
        action="store_true",
        help="check without --root-key (the bundle's own registry and keys are then taken as given)",
    )
    cb.set_defaults(func=_check_bundle)


def _ledger_path(args: argparse.Namespace) -> tuple[Config, Path]:
    cfg = tool_config(args)
    return cfg, cfg.path(cfg.ledger.path)


async def _evidence(cfg: Config, message_ids: list[str]) -> tuple[Any, list[Any], Any]:
    """(signed checkpoint, entries, tree): a checkpoint signed now (consistent with the region's
    last one, or refused), and the entries to prove against it."""
    registry = load_registry(cfg)
    secrets = load_secrets(cfg, registry)
    async with store_for(cfg) as store:
        signer = CheckpointSigner(
            store, key=lambda: secrets.signing, state_path=cfg.path(cfg.ledger.checkpoint_state)
        )
        await signer.open()
        signed = await signer.sign_now()
        if message_ids:
            entries = [e for m in message_ids for e in await store.by_message_id(m)]
        else:
            entries = await store.entries(0, signed.checkpoint.size)
        entries = [e for e in entries if e.index < signed.checkpoint.size]
        return signed, entries, signer.tree.tree


def _bundle(cfg: Config, signed: Any, entries: list[Any], tree: Any, receipts: list[bytes]) -> dict[str, Any]:
    registry = load_registry(cfg)
    region = cfg.region.code
    keys = {k.key_id: k.public_raw for k in registry.keys_of(region, registry_pb2.KEY_USE_SIGNING)}
    return make_bundle(
        region=region,
        entries=entries,
        tree=tree,
        checkpoint_note=signed.note,
        checkpoint_size=signed.checkpoint.size,
        public_keys=keys,
        signed_registry=registry.signed,
        receipts=receipts,
    )


def _prove(args: argparse.Namespace) -> int:
    if missing_node(args, "ledger prove"):
        return 2
    cfg, _ = _ledger_path(args)
    signed, entries, tree = asyncio.run(_evidence(cfg, [args.message_id]))
    if not entries:
        print(
            f"tongban ledger prove: no entry of message {args.message_id} in {cfg.region.code}'s ledger",
            file=sys.stderr,
        )
        return 1
    if args.json:
        print(json.dumps(_bundle(cfg, signed, entries, tree, []), ensure_ascii=False, indent=2))
        return 0
    cp = signed.checkpoint
    print(f"region {cfg.region.code}: checkpoint of {cp.size} entries, root {cp.root.hex()}")
    for e in entries:
        print(f"entry {e.index} {e.event} {e.message_id} envelope {e.envelope_digest.hex()}")
        print(f"  leaf {tree.leaf(e.index).hex()}")
        for i, h in enumerate(tree.inclusion_proof(e.index, cp.size)):
            print(f"  proof[{i}] {h.hex()}")
    print("signed checkpoint:")
    print(signed.note.decode("utf-8"), end="")
    return 0


def _export(args: argparse.Namespace) -> int:
    if missing_node(args, "ledger export"):
        return 2
    cfg, _ = _ledger_path(args)
    receipts = [Path(r).read_bytes() for r in args.receipt]
    signed, entries, tree = asyncio.run(_evidence(cfg, args.message_id))
    bundle = _bundle(cfg, signed, entries, tree, receipts)
    out = Path(args.out)
    write_atomically(out, json.dumps(bundle, ensure_ascii=False, indent=1).encode("utf-8"))
    print(
        f"bundle of {cfg.region.code}: {len(entries)} entries, {len(receipts)} receipts, "
        f"checkpoint of {signed.checkpoint.size} entries; written to {out}"
    )
    return 0


def _check_bundle(args: argparse.Namespace) -> int:
    roots = []
    if not args.root_key and not args.allow_unpinned:
        print(
            "tongban ledger check-bundle: give --root-key (the registry authority's public key): "
            "without it the bundle vouches for itself. --allow-unpinned checks anyway.",
            file=sys.stderr,
        )
        return 2
    if args.root_key:
        p = Path(args.root_key)
        roots.append(parse_public_key(p.read_text() if p.exists() else args.root_key))
    try:
        data = Path(args.bundle).read_bytes()
    except OSError as exc:
        print(f"tongban ledger check-bundle: {exc}", file=sys.stderr)
        return 2
    report = check_bundle(data, root_keys=roots)
    if report.root_key_pinned:
        print("trust registry: signed by the pinned root key")
    else:
        print("trust registry: root key NOT pinned (--root-key): the bundle's keys are taken as given")
    if report.tree_size or report.root:
        print(
            f"checkpoint of {report.region}: {report.tree_size} entries, "
            f"root {report.root.hex()}, signature OK"
        )
    for index, message_id in report.receipts:
        print(f"receipt: {report.region} recorded {message_id} at leaf {index}: signature and inclusion OK")
    if report.ok:
        print(f"bundle OK: {report.entries} entries proven, {len(report.receipts)} receipts verified")
        return 0
    for problem in report.problems:
        print(f"FAILED: {problem}")
    return 1


def _verify(args: argparse.Namespace) -> int:
    if not args.file and missing_node(args, "ledger verify"):
        return 2
    cfg = None
    if args.file:
        path = Path(args.file)
    else:
        cfg, path = _ledger_path(args)
    try:
        if cfg is not None and cfg.ledger.backend == "postgres":
            report = asyncio.run(_verify_configured(cfg))
        else:
            report = verify_sqlite_file(path, region=cfg.region.code if cfg else None)
    except LedgerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    name = cfg.region.code if cfg else str(path)
    if not report.ok:
        print(
            f"ledger {name}: BROKEN at index {report.first_bad_index}: {report.reason} "
            f"({report.count} entries read)"
        )
        return 1
    print(f"ledger {name}: {report.count} entries, hash chain OK, head {report.head_hash.hex()}")
    if cfg is None:
        return 0
    return asyncio.run(_verify_checkpoint(cfg))


async def _verify_configured(cfg: Config) -> Any:
    async with store_for(cfg) as store:
        return await verify_store(store, region=cfg.region.code)


async def _verify_checkpoint(cfg: Config) -> int:
    """The tree recomputed from the entries against the region's last signed checkpoint."""
    state = cfg.path(cfg.ledger.checkpoint_state)
    if not state.exists():
        print(f"ledger {cfg.region.code}: no signed checkpoint yet ({state})")
        return 0
    note = json.loads(state.read_text())["note"].encode("utf-8")
    registry = load_registry(cfg)
    keys = [
        Ed25519PublicKey.from_public_bytes(k.public_raw)
        for k in registry.keys_of(cfg.region.code, registry_pb2.KEY_USE_SIGNING)
    ]
    origin = origin_of(cfg.region.code)
    try:
        cp = parse_and_verify(note, {origin: keys}, origin=origin)
    except CheckpointError as exc:
        print(f"ledger {cfg.region.code}: the signed checkpoint does not verify: {exc}")
        return 1
    tree = LedgerTree()
    async with store_for(cfg) as store:
        await tree.sync(store)
    if tree.size < cp.size:
        print(
            f"ledger {cfg.region.code}: TRUNCATED: {tree.size} entries, but checkpoint signed at {cp.size} "
            f"(first missing index {tree.size})"
        )
        return 1
    if tree.tree.root(cp.size) != cp.root:
        print(
            f"ledger {cfg.region.code}: REWRITTEN: the tree of {cp.size} entries "
            "does not match the signed checkpoint"
        )
        return 1
    print(
        f"ledger {cfg.region.code}: Merkle tree matches the signed checkpoint of {cp.size} entries "
        f"(root {cp.root.hex()})"
    )
    return 0


def _check_receipt(args: argparse.Namespace) -> int:
    if missing_node(args, "ledger check-receipt"):
        return 2
    cfg, _ = _ledger_path(args)
    registry = load_registry(cfg)

    async def run() -> int:
        cases = CaseStore(cfg.path(cfg.gateway.case_store))
        await cases.open()
        try:
            signed = await cases.receipt(args.message_id)
        finally:
            await cases.close()
        if signed is None:
            print(f"no receipt for {args.message_id} in {cfg.region.code}'s case store", file=sys.stderr)
            return 1
        # Months later the key may have been rotated out: it must have been valid when the receipt
        # was signed (revoked keys are refused whatever the time).
        try:
            receipt = verify_receipt(
                signed, lambda kid, r, at: registry.signing_public_key(kid, region=r, at_s=at)
            )
        except EnvelopeRejected as exc:
            print(f"FAILED: the receipt does not verify: {exc.message}")
            return 1
        print(
            f"receipt: {receipt.region} recorded {receipt.message_id} at leaf {receipt.leaf_index}, "
            "signature OK"
        )
        state = cfg.path(cfg.ledger.witness_state)
        held = json.loads(state.read_text()).get("held", {}) if state.exists() else {}
        if receipt.region not in held:
            print(f"no checkpoint of {receipt.region} witnessed yet: try again after its next checkpoint")
            return 1
        cp = read_note(held[receipt.region].encode("utf-8")).checkpoint
        if receipt.leaf_index >= cp.size:
            print(
                f"the witnessed checkpoint of {receipt.region} has {cp.size} entries, not yet leaf "
                f"{receipt.leaf_index}: try again after its next checkpoint"
            )
            return 1
        nc = await tool_nats(cfg, "ledger")
        try:
            entry = await fetch_proven_entry(nc, receipt.region, receipt.leaf_index, cp)
        except LedgerError as exc:
            print(f"FAILED: {exc}")
            return 1
        finally:
            await nc.close()
        if (entry.event, entry.message_id, entry.envelope_digest) != (
            Event.RECEIVED,
            receipt.message_id,
            receipt.envelope_digest,
        ):
            print(f"FAILED: leaf {entry.index} of {receipt.region} records another envelope than the receipt")
            return 1
        print(
            f"inclusion: leaf {entry.index} ({entry.event}) is in {receipt.region}'s ledger "
            f"of {cp.size} entries, "
            f"root {cp.root.hex()} (witnessed checkpoint): delivery proven"
        )
        return 0

    return asyncio.run(run())
