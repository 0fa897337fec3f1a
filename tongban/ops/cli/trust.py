"""``tongban registry …`` and ``tongban keys new``: the trust registry's life while nodes run.

A key rotation, end to end (docs/architecture.md, "Security"):

1. the region: ``tongban keys new --use signing --config node.toml`` writes ``signing-<id>.pem``
   beside the key in use and prints its public key;
2. the authority: ``tongban registry add-key --file registry.signed --root-key root.key --region R
   --use signing --public-key HEX --overlap-s 86400`` (the old key stays valid for the overlap);
3. the authority: ``tongban registry publish --file registry.signed --config node.toml`` for each
   region, all within ``[keys] activation_delay_s`` (default 120 s) — running nodes adopt it, and
   the region's nodes sign with the new key once the registry has listed it that long;
4. later, ``tongban registry revoke --key-id OLD`` and publish again.

A new region (``add-region``), the services it provides (``add-service``) and who may call them
(``allow`` / ``deny``) are edits of the same signed document (:mod:`tongban.core.registry_edits`),
published the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.files import write_atomically
from tongban.core import registry_edits
from tongban.core.catalogue import Catalogue
from tongban.core.errors import Reason, RegistryError
from tongban.core.keys import SealingKey, SigningKey
from tongban.core.registration import Registration
from tongban.core.registry import Registry
from tongban.ops.cli.common import Subparsers, missing_node, node_flags, tool_config, tool_nats
from tongban.runtime import live_registry
from tongban.runtime.keyfiles import save_sealing_key, save_signing_key
from tongban.runtime.node import load_root_keys
from tongban.v1 import registry_pb2

USES = {"signing": registry_pb2.KEY_USE_SIGNING, "sealing": registry_pb2.KEY_USE_SEALING}


def add_parsers(sub: Subparsers) -> None:
    rg = sub.add_parser(
        "registry", help="the trust registry: regions, services, access rules, keys; publish to a region"
    )
    rsub = rg.add_subparsers(dest="registry_command", required=True)

    show = rsub.add_parser("show", help="print a signed registry (version, regions, keys, rules)")
    show.add_argument("--file", required=True, help="SignedRegistry file")
    show.set_defaults(func=_show)

    for verb, text in (
        ("add-key", "add a region's new key; its other keys of that use expire after the overlap"),
        ("revoke", "mark a key revoked"),
    ):
        c = rsub.add_parser(verb, help=text)
        c.add_argument("--file", required=True, help="SignedRegistry file (rewritten unless --out)")
        c.add_argument("--root-key", required=True, help="the registry authority's Ed25519 private key (PEM)")
        c.add_argument("--out", default="", help="write the new registry here instead")
        if verb == "add-key":
            c.add_argument("--region", required=True)
            c.add_argument("--use", choices=sorted(USES), required=True)
            c.add_argument(
                "--public-key", required=True, help="raw public key, hex (from `tongban keys new`)"
            )
            c.add_argument(
                "--overlap-s", type=float, default=86400.0, help="how long the old key stays valid"
            )
        else:
            c.add_argument("--key-id", required=True)
        c.set_defaults(func=_edit)

    admin = (
        ("add-region", "a new participating region (no keys, services or rules yet)"),
        ("remove-region", "take a region out, with every access rule naming it"),
        ("add-service", "a region provides a catalogue item"),
        ("allow", "an access rule: a caller region (and system) may call a provider region's service"),
        ("deny", "remove the access rule with exactly these terms"),
    )
    for verb, text in admin:
        c = rsub.add_parser(verb, help=text)
        c.add_argument("--file", required=True, help="SignedRegistry file (rewritten unless --out)")
        c.add_argument("--root-key", required=True, help="the registry authority's Ed25519 private key (PEM)")
        c.add_argument("--out", default="", help="write the new registry here instead")
        if verb in ("add-region", "remove-region", "add-service"):
            c.add_argument("--region", required=True, help="GB/T 2260 code")
        if verb == "add-region":
            c.add_argument("--name", required=True, help="e.g. 青岛市")
            c.add_argument("--gateway-address", default="", help="host:port of its gateway")
        if verb == "add-service":
            c.add_argument("--service", required=True, help="catalogue item code")
            c.add_argument("--catalogue", default="", help="catalogue file (default: the shipped one)")
        if verb in ("allow", "deny"):
            c.add_argument("--caller-region", required=True)
            c.add_argument("--caller-system", default=registry_edits.ANY, help="a system id, or * (default)")
            c.add_argument("--service", default=registry_edits.ANY, help="an item code, or * (default)")
            c.add_argument("--provider-region", required=True)
        c.set_defaults(func=_admin)

    ap = rsub.add_parser(
        "apply", help="register a new region from its registration request (tongban region init)"
    )
    ap.add_argument("request", help="registration.json")
    ap.add_argument("--file", required=True, help="SignedRegistry file (rewritten unless --out)")
    ap.add_argument("--root-key", required=True, help="the registry authority's Ed25519 private key (PEM)")
    ap.add_argument("--out", default="", help="write the new registry here instead")
    ap.add_argument("--catalogue", default="", help="catalogue file (default: the shipped one)")
    ap.set_defaults(func=_apply)

    pub = rsub.add_parser(
        "publish", help="put a signed registry into a region's bucket (nodes adopt it live)"
    )
    pub.add_argument("--file", required=True, help="SignedRegistry file")
    node_flags(pub)
    pub.set_defaults(func=_publish)

    ks = sub.add_parser("keys", help="a region's own keys")
    ksub = ks.add_subparsers(dest="keys_command", required=True)
    new = ksub.add_parser("new", help="generate the next signing or sealing key beside the one in use")
    new.add_argument("--use", choices=sorted(USES), required=True)
    node_flags(new)
    new.set_defaults(func=_keys_new)


def _fmt(ts: Any) -> str:
    if not ts.seconds:
        return "-"
    return datetime.datetime.fromtimestamp(ts.seconds, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _show(args: argparse.Namespace) -> int:
    try:
        doc = live_registry.read_signed(Path(args.file).read_bytes())
    except OSError as exc:
        print(f"tongban registry show: {exc}", file=sys.stderr)
        return 2
    print(f"version {doc.version}, issued {_fmt(doc.issued_at)}")
    for region in doc.regions:
        print(f"  {region.code} {region.name}  gateway {region.gateway_address or '-'}")
        for k in region.keys:
            state = "REVOKED" if k.revoked else "ok"
            print(f"    {k.key_id:<28} {k.algorithm:<12} {_fmt(k.not_before)} → {_fmt(k.not_after)}  {state}")
        print(f"    provides {len(region.provided_services)} services: {' '.join(region.provided_services)}")
    print(f"{len(doc.access_rules)} access rules")
    for rule in doc.access_rules:
        print(f"  {rule.caller_region}/{rule.caller_system} → {rule.service_code} of {rule.provider_region}")
    return 0


def _root(path: str) -> Ed25519PrivateKey | None:
    root = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(root, Ed25519PrivateKey):
        print("tongban registry: --root-key is not an Ed25519 private key", file=sys.stderr)
        return None
    return root


def _admin(args: argparse.Namespace) -> int:
    root = _root(args.root_key)
    if root is None:
        return 2
    said: list[str] = []

    def edit(doc: registry_pb2.TrustRegistry) -> None:
        match args.registry_command:
            case "add-region":
                registry_edits.add_region(doc, args.region, args.name, gateway_address=args.gateway_address)
                said.append(f"added region {args.region} {args.name}")
            case "remove-region":
                rules = registry_edits.remove_region(doc, args.region)
                said.append(f"removed region {args.region} and {rules} access rule(s)")
            case "add-service":
                catalogue = Catalogue.load(args.catalogue or None)
                new = registry_edits.add_service(doc, args.region, args.service, catalogue=catalogue)
                said.append(f"{args.region} provides {args.service}" + ("" if new else " (already did)"))
            case verb:
                terms = {"caller_system": args.caller_system, "service": args.service}
                if verb == "allow":
                    new = registry_edits.allow(doc, args.caller_region, args.provider_region, **terms)
                    said.append("allowed" + ("" if new else " (the rule existed)"))
                else:
                    registry_edits.deny(doc, args.caller_region, args.provider_region, **terms)
                    said.append("denied")
                said[-1] += (
                    f" {args.caller_region}/{args.caller_system} → {args.service} of {args.provider_region}"
                )

    data = live_registry.edit_signed(Path(args.file).read_bytes(), root, edit)
    out = Path(args.out or args.file)
    write_atomically(out, data)
    print(f"registry version {live_registry.read_signed(data).version}: {said[0]}; written to {out}")
    return 0


def _apply(args: argparse.Namespace) -> int:
    root = _root(args.root_key)
    if root is None:
        return 2
    request = Registration.verify(Path(args.request).read_bytes())
    catalogue = Catalogue.load(args.catalogue or None)

    def edit(doc: registry_pb2.TrustRegistry) -> None:
        registry_edits.add_region(doc, request.region, request.name, gateway_address=request.gateway_address)
        live_registry.add_key(
            doc, request.region, registry_pb2.KEY_USE_SIGNING, request.signing_key, overlap_s=0
        )
        live_registry.add_key(
            doc, request.region, registry_pb2.KEY_USE_SEALING, request.sealing_key, overlap_s=0
        )
        for service in request.services:
            registry_edits.add_service(doc, request.region, service, catalogue=catalogue)

    data = live_registry.edit_signed(Path(args.file).read_bytes(), root, edit)
    out = Path(args.out or args.file)
    write_atomically(out, data)
    print(
        f"registry version {live_registry.read_signed(data).version}: registered {request.region} "
        f"{request.name} ({request.signing_key_id}, {request.sealing_key_id}, {len(request.services)} "
        f"services); written to {out}. Access rules: tongban registry allow"
    )
    return 0


def _edit(args: argparse.Namespace) -> int:
    root = _root(args.root_key)
    if root is None:
        return 2
    added: list[str] = []

    def edit(doc: registry_pb2.TrustRegistry) -> None:
        if args.registry_command == "revoke":
            live_registry.revoke_key(doc, args.key_id)
            return
        try:
            public = bytes.fromhex(args.public_key)
        except ValueError:
            public = b""
        if len(public) != 32:
            raise RegistryError("--public-key must be 64 hex characters", reason=Reason.BAD_KEY)
        added.append(
            live_registry.add_key(doc, args.region, USES[args.use], public, overlap_s=args.overlap_s)
        )

    data = live_registry.edit_signed(Path(args.file).read_bytes(), root, edit)
    out = Path(args.out or args.file)
    write_atomically(out, data)
    what = f"added {added[0]}" if added else f"revoked {args.key_id}"
    print(f"registry version {live_registry.read_signed(data).version}: {what}; written to {out}")
    return 0


def _publish(args: argparse.Namespace) -> int:
    if missing_node(args, f"registry {args.registry_command}"):
        return 2
    cfg = tool_config(args)
    data = Path(args.file).read_bytes()
    registry = Registry.from_signed(data, load_root_keys(cfg))  # refuse to publish what nodes would refuse

    async def run() -> int:
        nc = await tool_nats(cfg, "registry")
        try:
            revision = await live_registry.publish(
                nc, cfg.region.code, data, replicas=cfg.nats.stream_replicas
            )
        finally:
            await nc.close()
        bucket = live_registry.bucket_name(cfg.region.code)
        print(f"registry version {registry.version} put in {bucket} (revision {revision})")
        return 0

    return asyncio.run(run())


def _keys_new(args: argparse.Namespace) -> int:
    if missing_node(args, f"keys {args.keys_command}"):
        return 2
    cfg = tool_config(args)
    region = cfg.region.code
    if args.use == "signing":
        sk = SigningKey.generate(region)
        current = cfg.path(cfg.keys.signing_key)
        path = current.with_name(f"{current.stem}-{sk.key_id.rsplit('.', 1)[-1]}{current.suffix}")
        save_signing_key(path, sk)
        kid, public = sk.key_id, sk.public_raw
    else:
        kk = SealingKey.generate(region)
        current = cfg.path(cfg.keys.sealing_key)
        path = current.with_name(f"{current.stem}-{kk.key_id.rsplit('.', 1)[-1]}{current.suffix}")
        save_sealing_key(path, kk)
        kid, public = kk.key_id, kk.public_raw
    print(f"{kid} written to {path}")
    print(
        "Give the registry authority:\n"
        f"  tongban registry add-key --region {region} --use {args.use} --public-key {public.hex()} "
        "--file registry.signed --root-key root.key"
    )
    return 0
