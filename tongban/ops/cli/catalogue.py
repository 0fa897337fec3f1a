"""``tongban catalogue …``: read, check, search and publish the service catalogue.

``list``, ``show`` and ``search`` read the catalogue shipped in the package, a deployment's file
(``--file``: protobuf JSON, or a ``*.signed`` SignedCatalogue, shown unverified), or a running
gateway's (``--gateway``: its CatalogueService, what partners see). ``validate`` checks a file the
way a node loads it and names every bad item. ``publish`` is the registry authority's: it signs a
catalogue with the root key and puts it into each region's bucket, where every gateway and
connector adopts it without a restart (docs/catalogue.md).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf import json_format

from ledger.files import write_atomically
from tongban.core.catalogue import Catalogue, CatalogueItem
from tongban.core.catalogue_search import CatalogueIndex
from tongban.core.catalogue_signing import (
    SIGNED_SUFFIX,
    CatalogueError,
    read_unverified,
    sign_catalogue,
    verify_catalogue,
)
from tongban.core.errors import ConfigError
from tongban.core.registry import Registry
from tongban.ops.cli.common import DEFAULT_STATE, Subparsers, channel, tls_flags, tool_config, tool_nats
from tongban.runtime import live_catalogue
from tongban.runtime.config import Config
from tongban.runtime.node import load_root_keys
from tongban.v1 import catalogue_pb2, catalogue_pb2_grpc, exchange_pb2

MODES = {
    "query": catalogue_pb2.HANDLING_MODE_QUERY,
    "fully-online": catalogue_pb2.HANDLING_MODE_FULLY_ONLINE,
    "collect-here-handle-there": catalogue_pb2.HANDLING_MODE_COLLECT_HERE_HANDLE_THERE,
    "joint": catalogue_pb2.HANDLING_MODE_JOINT,
}
SHARES = {
    "unconditional": exchange_pb2.SHARE_ATTRIBUTE_UNCONDITIONAL,
    "conditional": exchange_pb2.SHARE_ATTRIBUTE_CONDITIONAL,
    "not-shared": exchange_pb2.SHARE_ATTRIBUTE_NOT_SHARED,
}
_MODE_WORD = {v: k for k, v in MODES.items()}
_SHARE_WORD = {v: k for k, v in SHARES.items()}


def add_parsers(sub: Subparsers) -> None:
    cg = sub.add_parser("catalogue", help="the service catalogue: list, show, search, validate, publish")
    csub = cg.add_subparsers(dest="catalogue_command", required=True)

    ls = csub.add_parser("list", help="the items, filtered")
    ls.add_argument("--mode", choices=sorted(MODES), help="handling mode")
    ls.add_argument("--department", default="", help="providing department, exactly")
    ls.add_argument("--category", default="", help="跨省通办 category, exactly (e.g. 公积金)")
    ls.add_argument("--share", choices=sorted(SHARES), help="share attribute")
    ls.add_argument(
        "--region", default="", help="only items this region provides (needs --registry or --gateway)"
    )
    ls.add_argument("--registry", default="", help="SignedRegistry file naming what each region provides")
    _source_flags(ls)
    ls.set_defaults(func=_list)

    sh = csub.add_parser("show", help="one item with its whole form schema")
    sh.add_argument("code", help="item code")
    sh.add_argument("--json", action="store_true", help="print the item as protobuf JSON")
    _source_flags(sh)
    sh.set_defaults(func=_show)

    se = csub.add_parser("search", help="items matching keywords (Chinese or English), best first")
    se.add_argument("words", nargs="+", help="keywords, e.g. 公积金 提取")
    se.add_argument("--limit", type=int, default=20)
    _source_flags(se)
    se.set_defaults(func=_search)

    va = csub.add_parser("validate", help="check a catalogue file as a node loads it; exit 1 on a problem")
    va.add_argument("file", help="protobuf JSON of tongban.v1.Catalogue, or a *.signed SignedCatalogue")
    va.add_argument("--config", default="", help="a node config: verify a signed file with its root keys")
    va.set_defaults(func=_validate)

    pb = csub.add_parser(
        "publish", help="sign a catalogue and put it into regions' buckets (nodes adopt it live)"
    )
    pb.add_argument("file", help="protobuf JSON of tongban.v1.Catalogue (signed here), or a *.signed file")
    pb.add_argument("--root-key", default="", help="the registry authority's Ed25519 private key (PEM)")
    pb.add_argument("--region", action="append", default=[], help="dev stack region (repeat for each)")
    pb.add_argument("--config", action="append", default=[], help="a region's node config (repeatable)")
    pb.add_argument("--state-dir", default=DEFAULT_STATE)
    pb.add_argument("--out", default="", help="also write the SignedCatalogue here")
    pb.set_defaults(func=_publish)


def _source_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--file", default="", help="a catalogue file (default: the shipped catalogue)")
    p.add_argument("--gateway", default="", help="host:port of a gateway: ask its CatalogueService")
    p.add_argument("--timeout", type=float, default=10.0, help="deadline of a gateway call")
    tls_flags(p)


# -- reading ---------------------------------------------------------------------------------------


def _read(path: str) -> Catalogue:
    """The shipped catalogue, or a file's (a signed one is shown unverified: ``validate`` checks)."""
    if not path:
        return Catalogue.load()
    p = Path(path)
    if p.name.endswith(SIGNED_SUFFIX):
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read {p}: {exc.strerror or exc}") from exc
        return Catalogue.from_proto(read_unverified(data), signed=data)
    return Catalogue.load(p)


def _stub(args: argparse.Namespace) -> tuple[grpc.Channel, catalogue_pb2_grpc.CatalogueServiceStub]:
    ch = channel(args.gateway, ca=args.ca, cert=args.cert, key=args.key)
    return ch, catalogue_pb2_grpc.CatalogueServiceStub(ch)


def _rpc_failed(command: str, exc: grpc.RpcError) -> int:
    print(f"tongban catalogue {command}: {exc.code().name}: {exc.details()}", file=sys.stderr)
    return 2


def _line(item: CatalogueItem) -> str:
    mode = _MODE_WORD.get(item.handling_mode, "-")
    return f"{item.code:<14} {item.category or '-':<6} {mode:<26} {item.name}"


def _list(args: argparse.Namespace) -> int:
    if args.gateway:
        return _list_remote(args)
    catalogue = _read(args.file)
    provided: set[str] | None = None
    if args.region:
        if not args.registry:
            print("tongban catalogue list: --region needs --registry FILE (or --gateway)", file=sys.stderr)
            return 2
        region = Registry.read_unverified(Path(args.registry).read_bytes()).region(args.region)
        provided = set(region.provided_services) if region is not None else set()
    items = [
        item
        for item in catalogue
        if (not args.mode or item.handling_mode == MODES[args.mode])
        and (not args.department or item.provider_department == args.department)
        and (not args.category or item.category == args.category)
        and (not args.share or item.share_attribute == SHARES[args.share])
        and (provided is None or item.code in provided)
    ]
    _print_list(items, catalogue.version, catalogue.revision)
    return 0


def _list_remote(args: argparse.Namespace) -> int:
    request = catalogue_pb2.ListServicesRequest(
        page_size=200, department=args.department, provider_region=args.region, category=args.category
    )
    if args.mode:
        request.handling_mode = MODES[args.mode]
    if args.share:
        request.share_attribute = SHARES[args.share]
    items: list[CatalogueItem] = []
    ch, stub = _stub(args)
    try:
        while True:
            page = stub.ListServices(request, timeout=args.timeout)
            items += page.items
            if not page.next_page_token:
                break
            request.page_token = page.next_page_token
    except grpc.RpcError as exc:
        return _rpc_failed("list", exc)
    finally:
        ch.close()
    _print_list(items, page.catalogue_version, page.catalogue_revision)
    return 0


def _print_list(items: Iterable[CatalogueItem], version: str, revision: int) -> None:
    shown = list(items)
    for item in shown:
        print(_line(item))
    print(f"{len(shown)} items (catalogue {version or '-'}, revision {revision})")


def _show(args: argparse.Namespace) -> int:
    providers: list[str] = []
    if args.gateway:
        ch, stub = _stub(args)
        try:
            answer = stub.GetService(catalogue_pb2.GetServiceRequest(code=args.code), timeout=args.timeout)
        except grpc.RpcError as exc:
            return _rpc_failed("show", exc)
        finally:
            ch.close()
        item, providers = answer.item, list(answer.provider_regions)
    else:
        found = _read(args.file).get(args.code)
        if found is None:
            print(f"tongban catalogue show: no item {args.code}", file=sys.stderr)
            return 1
        item = found
    if args.json:
        print(json_format.MessageToJson(item, ensure_ascii=False, indent=2))
        return 0
    for line in describe(item, providers):
        print(line)
    return 0


def describe(item: CatalogueItem, providers: Iterable[str] = ()) -> list[str]:
    """The lines ``show`` prints: the item, its form schema, its answer."""
    kind = exchange_pb2.ApplicantKind.Name(item.applicant_kind).removeprefix("APPLICANT_KIND_").lower()
    lines = [
        f"{item.code}  {item.name}" + (f"  ({item.name_en})" if item.name_en else ""),
        f"  category {item.category or '-'}, {_MODE_WORD.get(item.handling_mode, '-')}, "
        f"for {kind} applicants",
        f"  department {item.provider_department or '-'}; {_SHARE_WORD.get(item.share_attribute, '-')}, "
        f"grade {item.data_grade or '-'}" + (", sensitive personal data" if item.sensitive else ""),
        f"  承诺时限 {item.promised_days or '-'} working days, 法定时限 {item.legal_days or '-'}",
    ]
    if item.aliases:
        lines.append(f"  also known as {'、'.join(item.aliases)}")
    if item.description:
        lines.append(f"  {item.description}")
    if providers:
        lines.append(f"  provided by {', '.join(providers)}")
    lines.append("  form fields:")
    for spec in item.fields:
        lines.append("    " + _spec_line(spec))
    lines.append("  answer fields:")
    specs = {s.name: s for s in item.response_specs}
    for name in item.response_fields:
        answer = specs.get(name)
        lines.append("    " + (_spec_line(answer) if answer is not None else name))
    return lines


def _spec_line(spec: catalogue_pb2.FieldSpec) -> str:
    type_word = catalogue_pb2.FieldType.Name(spec.type).removeprefix("FIELD_TYPE_").lower()
    rules = ["required" if spec.required else "optional"]
    if spec.min_length or spec.max_length:
        rules.append(f"length {spec.min_length or 0}..{spec.max_length or '-'}")
    if spec.pattern:
        rules.append(f"pattern {spec.pattern}")
    if spec.allowed_values:
        rules.append(f"one of {', '.join(spec.allowed_values)}")
    if spec.personal:
        rules.append("personal")
    text = f"{spec.name:<24} {type_word:<11} {'; '.join(rules)}"
    label = " — ".join(x for x in (spec.label, spec.description) if x)
    return f"{text}  {label}" if label else text


def _search(args: argparse.Namespace) -> int:
    query = " ".join(args.words)
    if args.gateway:
        ch, stub = _stub(args)
        try:
            answer = stub.SearchServices(
                catalogue_pb2.SearchServicesRequest(query=query, page_size=args.limit), timeout=args.timeout
            )
        except grpc.RpcError as exc:
            return _rpc_failed("search", exc)
        finally:
            ch.close()
        hits = [(h.item, h.score) for h in answer.hits]
    else:
        hits = [(h.item, h.score) for h in CatalogueIndex(_read(args.file)).search(query, limit=args.limit)]
    for item, score in hits:
        print(f"{score:8.2f}  {_line(item)}")
    if not hits:
        print(f"no item matches {query}")
    return 0


# -- checking and publishing ---------------------------------------------------------------------


def _validate(args: argparse.Namespace) -> int:
    path = Path(args.file)
    problems: list[str] = []
    notes: list[str] = []
    try:
        if path.name.endswith(SIGNED_SUFFIX):
            data = path.read_bytes()
            msg = read_unverified(data)
            if args.config:
                verify_catalogue(data, load_root_keys(Config.load(args.config)))
                notes.append("signature: valid (a pinned root key of the config signed it)")
            else:
                notes.append("signature: not checked (give --config to check it with a node's root keys)")
        else:
            msg = _json(path)
    except (OSError, ConfigError) as exc:
        print(f"{path}: {getattr(exc, 'message', None) or exc}")
        return 1
    problems += _item_problems(msg)
    if not problems:
        catalogue = Catalogue.from_proto(msg)
        if not catalogue.revision:
            notes.append("revision 0: nodes adopt a published catalogue only with a higher revision")
        missing = [i.code for i in catalogue if not (i.category and i.description)]
        if missing:
            notes.append(f"{len(missing)} items without category or description (search finds less)")
        notes.insert(0, f"catalogue {msg.version or '-'}, revision {msg.revision}: {len(catalogue)} items")
    for line in [*problems, *notes]:
        print(f"{path}: {line}")
    return 1 if problems else 0


def _json(path: Path) -> catalogue_pb2.Catalogue:
    msg = catalogue_pb2.Catalogue()
    try:
        json_format.Parse(path.read_text(encoding="utf-8"), msg)
    except (json_format.ParseError, UnicodeDecodeError) as exc:
        raise ConfigError(f"not protobuf JSON of tongban.v1.Catalogue: {exc}") from exc
    return msg


def _item_problems(msg: catalogue_pb2.Catalogue) -> list[str]:
    """Every bad item (a node stops at the first), then a code used twice."""
    problems: list[str] = []
    for item in msg.items:
        try:
            Catalogue.from_proto(catalogue_pb2.Catalogue(items=[item]))
        except ConfigError as exc:
            problems.append(exc.message)
    codes = [i.code for i in msg.items]
    problems += [
        f"catalogue item {c}: the code is used twice"
        for c in sorted({c for c in codes if codes.count(c) > 1})
    ]
    return problems


def _publish(args: argparse.Namespace) -> int:
    configs = [Path(c) for c in args.config] + [Path(args.state_dir) / r / "node.toml" for r in args.region]
    if not configs:
        print("tongban catalogue publish: give --region or --config (one per region)", file=sys.stderr)
        return 2
    path = Path(args.file)
    if path.name.endswith(SIGNED_SUFFIX):
        data = path.read_bytes()
    else:
        if not args.root_key:
            print(
                "tongban catalogue publish: a JSON catalogue is signed here: give --root-key", file=sys.stderr
            )
            return 2
        root = serialization.load_pem_private_key(Path(args.root_key).read_bytes(), password=None)
        if not isinstance(root, Ed25519PrivateKey):
            print("tongban catalogue publish: --root-key is not an Ed25519 private key", file=sys.stderr)
            return 2
        msg = Catalogue.load(path).to_proto()
        if not msg.HasField("issued_at"):
            msg.issued_at.FromNanoseconds(time.time_ns())
        data = sign_catalogue(msg, root)
    if args.out:
        write_atomically(Path(args.out), data)
    return max(asyncio.run(_put(tool_config_of(c), data)) for c in configs)


def tool_config_of(path: Path) -> Config:
    """A region's node config, loaded as a tool's."""
    return tool_config(argparse.Namespace(config=str(path), region="", state_dir=""))


async def _put(cfg: Config, data: bytes) -> int:
    """Publish ``data`` into ``cfg``'s region's bucket unless its nodes would refuse it."""
    region = cfg.region.code
    roots = load_root_keys(cfg)
    try:
        catalogue = verify_catalogue(data, roots)  # refuse to publish what nodes would refuse
    except CatalogueError as exc:
        print(f"tongban catalogue publish: {region}: {exc.message} ({exc.check.value})", file=sys.stderr)
        return 2
    nc = await tool_nats(cfg, "catalogue")
    try:
        held = await live_catalogue.held_in_bucket(nc, region, roots)
        if held is not None and held.revision >= catalogue.revision and held.signed != data:
            print(
                f"tongban catalogue publish: {region}'s bucket holds revision {held.revision} already: "
                f"publish a higher revision than {catalogue.revision}",
                file=sys.stderr,
            )
            return 2
        revision = await live_catalogue.publish(nc, region, data, replicas=cfg.nats.stream_replicas)
    finally:
        await nc.close()
    print(
        f"catalogue {catalogue.version or '-'} revision {catalogue.revision} ({len(catalogue)} items) "
        f"put in {live_catalogue.bucket_name(region)} (bucket revision {revision})"
    )
    return 0
