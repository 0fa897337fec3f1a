"""The ``tongban`` command line.

The CLI is the composition root: it is the one module of ``tongban`` that reaches into the
deployables (``gateway``, ``connectors``, ``ledger``), and only lazily, inside the command that
runs them, so the core stays importable without them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

DEFAULT_STATE = ".tongban"


def _cmd_dev(args: argparse.Namespace) -> int:
    from tongban.dev import run_dev
    from tongban.natsserver import NatsServerError
    from tongban.telemetry import configure_logging

    configure_logging(fmt="console", level="warning")
    try:
        asyncio.run(run_dev(Path(args.state_dir), otlp_endpoint=args.otlp))
    except (NatsServerError, RuntimeError, TimeoutError, OSError) as exc:
        print(f"tongban dev: {exc}", file=sys.stderr)
        return 1
    return 0


def _load_config(path: str) -> Any:
    from tongban.config import Config
    from tongban.telemetry import configure_logging

    cfg = Config.load(path)
    configure_logging(fmt=cfg.log.format, level=cfg.log.level, region=cfg.region.code)
    return cfg


def _cmd_gateway(args: argparse.Namespace) -> int:
    from gateway.app import run

    asyncio.run(run(_load_config(args.config)))
    return 0


def _cmd_connector(args: argparse.Namespace) -> int:
    from connectors.app import run

    asyncio.run(run(_load_config(args.config)))
    return 0


def _cmd_query(args: argparse.Namespace) -> int:
    import grpc
    from google.protobuf import json_format
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    from tongban.catalogue import Catalogue
    from tongban.v1 import exchange_pb2, exchange_pb2_grpc

    fields: dict[str, str] = {}
    for item in args.field:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"tongban query: --field {key!r} must be NAME=VALUE", file=sys.stderr)
            return 2
        fields[key] = value
    req = exchange_pb2.ServiceRequest(service_code=args.service, target_region=args.to)
    item = Catalogue.load().get(args.service)
    req.applicant.kind = item.applicant_kind if item is not None else exchange_pb2.APPLICANT_KIND_PERSON
    for key, attr in (("id_no", "id_no"), ("uscc", "id_no"), ("name", "name"), ("phone", "phone")):
        if key in fields:
            setattr(req.applicant, attr, fields.pop(key))
    req.fields.update(fields)
    g = req.governance
    g.purpose_code = args.purpose
    g.purpose_text = args.purpose_text
    g.legal_basis = (
        exchange_pb2.LEGAL_BASIS_CONSENT
        if args.legal_basis == "consent"
        else exchange_pb2.LEGAL_BASIS_STATUTORY_DUTY
    )
    g.consent_reference = args.consent_ref
    g.declared_fields.extend(args.declare)
    if args.idempotency_key:
        req.idempotency_key = args.idempotency_key

    with grpc.insecure_channel(args.gateway) as channel:
        stub = exchange_pb2_grpc.ExchangeStub(channel)
        try:
            resp = stub.Query(exchange_pb2.QueryRequest(request=req), timeout=args.timeout)
        except grpc.RpcError as err:
            print(f"error: {err.code().name}: {err.details()}", file=sys.stderr)  # type: ignore[attr-defined]
            status = rpc_status.from_call(err)  # type: ignore[arg-type]
            for detail in status.details if status else []:
                if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    br = error_details_pb2.BadRequest()
                    detail.Unpack(br)
                    for v in br.field_violations:
                        print(f"  field {v.field}: {v.description}", file=sys.stderr)
                elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    print(f"  reason {info.reason}", file=sys.stderr)
            return 1
    out = {
        "message_id": resp.message_id,
        "service_code": resp.service_code,
        "responder_region": resp.responder_region,
        "verified": True,
        "responder_key_id": resp.responder_key_id,
        "request_digest": resp.request_digest.hex(),
        "response_digest": resp.response_digest.hex(),
        "trace_id": resp.trace_id,
        "data": _whole_numbers(json_format.MessageToDict(resp.data)),
    }
    print(json.dumps(out, ensure_ascii=False, indent=2))
    return 0


def _whole_numbers(value: Any) -> Any:
    """protobuf Struct numbers are doubles: show 220.0 months as 220 again."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _whole_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_numbers(v) for v in value]
    return value


def _cmd_ledger_verify(args: argparse.Namespace) -> int:
    from ledger import LedgerError
    from ledger.verify import verify_sqlite_file

    path = Path(args.file) if args.file else Path(args.state_dir) / args.region / "ledger.sqlite"
    try:
        report = verify_sqlite_file(path, region=args.region)
    except LedgerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if report.ok:
        name = args.region or path
        print(f"ledger {name}: {report.count} entries, hash chain OK, head {report.head_hash.hex()}")
        return 0
    print(
        f"ledger {args.region or path}: BROKEN at index {report.first_bad_index}: {report.reason} "
        f"({report.count} entries read)"
    )
    return 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tongban", description="tongban (通办): cross-province data-exchange gateway"
    )
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("dev", help="run a two-region dev stack (Shenzhen 440300, Wuxi 320200) until Ctrl-C")
    d.add_argument(
        "--state-dir", default=DEFAULT_STATE, help="keys, registry, configs, ledgers (default .tongban)"
    )
    d.add_argument("--otlp", default="", help="OTLP/gRPC endpoint to export traces to (default: none)")
    d.set_defaults(func=_cmd_dev)

    for role, func in (("gateway", _cmd_gateway), ("connector", _cmd_connector)):
        r = sub.add_parser(role, help=f"run a {role} from a config file until SIGTERM")
        r.add_argument("--config", required=True, help="TOML config file")
        r.set_defaults(func=func)

    q = sub.add_parser("query", help="call Exchange.Query on a gateway and print the verified answer")
    q.add_argument("--gateway", required=True, help="host:port of the gateway")
    q.add_argument("--to", required=True, help="GB/T 2260 code of the region holding the data")
    q.add_argument("--service", required=True, help="catalogue item code")
    q.add_argument(
        "--field",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="form field; id_no/uscc, name and phone fill the applicant",
    )
    q.add_argument("--purpose", required=True, help="purpose code, e.g. KSTB_CASE_HANDLING")
    q.add_argument("--purpose-text", default="", help="申请事由")
    q.add_argument("--legal-basis", choices=("statutory", "consent"), default="statutory")
    q.add_argument(
        "--consent-ref", default="", help="consent reference (required with --legal-basis consent)"
    )
    q.add_argument("--declare", action="append", default=[], metavar="FIELD", help="response field needed")
    q.add_argument("--idempotency-key", default="")
    q.add_argument("--timeout", type=float, default=10.0, help="deadline in seconds (default 10)")
    q.set_defaults(func=_cmd_query)

    lg = sub.add_parser("ledger", help="ledger tools")
    lsub = lg.add_subparsers(dest="ledger_command", required=True)
    v = lsub.add_parser("verify", help="check a region's ledger hash chain from scratch")
    v.add_argument("--region", default="", help="region code (ledger at <state-dir>/<region>/ledger.sqlite)")
    v.add_argument("--state-dir", default=DEFAULT_STATE)
    v.add_argument("--file", default="", help="ledger file (instead of --region/--state-dir)")
    v.set_defaults(func=_cmd_ledger_verify)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "ledger" and not (args.region or args.file):
        print("tongban ledger verify: give --region or --file", file=sys.stderr)
        return 2
    from tongban.errors import TongbanError

    try:
        rc: int = args.func(args)
    except TongbanError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Output piped into `head` and the like: not an error of ours. Point stdout at /dev/null so
        # the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return rc


if __name__ == "__main__":
    sys.exit(main())
