"""``tongban query``, ``tongban submit`` and ``tongban case``: a partner's calls to its gateway, and
the handling region's later case statuses.

``tongban case send-status`` was ``tongban case report``, a name that overlapped ``tongban report``
(a region's exchange statistics); ``report`` still works, hidden from the help, for operators'
scripts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

import grpc
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from connectors.adapters import StatusUpdate
from connectors.case_events import CaseEvents
from connectors.state import ConnectorState
from tongban.core.catalogue import Catalogue
from tongban.ops.cli.common import (
    Subparsers,
    channel,
    missing_node,
    node_flags,
    tls_flags,
    tool_config,
    tool_nats,
)
from tongban.runtime.ledgers import store_for
from tongban.runtime.node import load_registry, load_secrets
from tongban.runtime.streams import ensure_streams
from tongban.v1 import exchange_pb2, exchange_pb2_grpc

SEND_STATUS = "send-status"
"""The case command of the handling region; ``report`` is its former name, kept as a hidden alias."""
SEND_STATUS_ALIASES = ("report",)


def add_parsers(sub: Subparsers) -> None:
    q = sub.add_parser("query", help="call Exchange.Query on a gateway and print the verified answer")
    q.add_argument("--gateway", required=True, help="host:port of the gateway")
    _request_flags(q)
    q.add_argument("--timeout", type=float, default=10.0, help="deadline in seconds (default 10)")
    tls_flags(q)
    q.set_defaults(func=_query)

    sm = sub.add_parser(
        "submit", help="call Exchange.Submit: hand a case to another region, print the receipt"
    )
    sm.add_argument("--ttl", type=float, default=0.0, help="seconds the case may wait (default: catalogue)")
    sm.add_argument("--watch", action="store_true", help="then stream the case's events until it ends")
    sm.add_argument("--watch-timeout", type=float, default=600.0, help="how long --watch waits (default 600)")
    sm.add_argument("--gateway", required=True, help="host:port of the gateway")
    _request_flags(sm)
    sm.add_argument("--timeout", type=float, default=10.0, help="deadline of the Submit call (default 10)")
    tls_flags(sm)
    sm.set_defaults(func=_submit)

    cs = sub.add_parser(
        "case",
        help="read or watch a case submitted through a gateway",
        description="Read or watch a case submitted through a gateway; in the handling region, send a "
        f"later status of a case ({SEND_STATUS}, formerly `case report`, a name that still works).",
    )
    # The metavar lists the commands without the hidden alias.
    csub = cs.add_subparsers(dest="case_command", required=True, metavar=f"{{get,watch,{SEND_STATUS}}}")
    for verb, text in (
        ("get", "print the case and its events"),
        ("watch", "stream its events until it ends"),
    ):
        c = csub.add_parser(verb, help=text)
        c.add_argument("case_no", help="case number from the Submit receipt")
        c.add_argument("--gateway", required=True, help="host:port of the gateway it was submitted to")
        c.add_argument("--timeout", type=float, default=600.0 if verb == "watch" else 10.0)
        if verb == "watch":
            c.add_argument("--after", type=int, default=0, help="resume after this event sequence")
        tls_flags(c)
        c.set_defaults(func=_case)

    for name in (SEND_STATUS, *SEND_STATUS_ALIASES):
        if name == SEND_STATUS:
            text = "handling region: send a later status of a case (补正, 办结, ...); formerly `case report`"
            rp = csub.add_parser(name, help=text)
        else:
            rp = csub.add_parser(name)  # no help: argparse lists only the commands that have one
        rp.add_argument("case_no", help="case number")
        rp.add_argument(
            "--status", type=int, required=True, help="BLZT code 1-15, e.g. 6 补正（开始）, 11 办结（通过）"
        )
        rp.add_argument("--local-code", default="", help="the local system's own status code")
        rp.add_argument("--local-system", default="", help="the local system's name")
        rp.add_argument(
            "--note", default="", help="note for the collecting window (sealed: may hold personal data)"
        )
        node_flags(rp)
        rp.set_defaults(func=_send_status)


def _request_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--to", required=True, help="GB/T 2260 code of the region holding the data")
    p.add_argument("--service", required=True, help="catalogue item code")
    p.add_argument(
        "--field",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="form field; id_no/uscc, name and phone fill the applicant",
    )
    p.add_argument("--purpose", required=True, help="purpose code, e.g. KSTB_CASE_HANDLING")
    p.add_argument("--purpose-text", default="", help="申请事由")
    p.add_argument("--legal-basis", choices=("statutory", "consent"), default="statutory")
    p.add_argument(
        "--consent-ref", default="", help="consent reference (required with --legal-basis consent)"
    )
    p.add_argument("--approval-ref", default="", help="approval reference (required by 有条件共享 items)")
    p.add_argument("--legal-ref", default="", help="statute relied on (required by sensitive items)")
    p.add_argument(
        "--sensitive", action="store_true", help="acknowledge that the item returns sensitive personal data"
    )
    p.add_argument("--declare", action="append", default=[], metavar="FIELD", help="response field needed")
    p.add_argument("--idempotency-key", default="")


def _gateway_channel(args: argparse.Namespace) -> grpc.Channel:
    return channel(args.gateway, ca=args.ca, cert=args.cert, key=args.key)


def _service_request(args: argparse.Namespace) -> exchange_pb2.ServiceRequest | None:
    """The ServiceRequest the query/submit flags describe, or None after printing the problem."""
    fields: dict[str, str] = {}
    for item in args.field:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"tongban {args.command}: --field {key!r} must be NAME=VALUE", file=sys.stderr)
            return None
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
    g.approval_reference = args.approval_ref
    g.legal_reference = args.legal_ref
    g.sensitive = args.sensitive
    g.declared_fields.extend(args.declare)
    if args.idempotency_key:
        req.idempotency_key = args.idempotency_key
    return req


def _print_rpc_error(err: grpc.RpcError) -> None:
    """Status, reason and field violations of a failed call, on stderr."""
    print(f"error: {err.code().name}: {err.details()}", file=sys.stderr)
    status = rpc_status.from_call(err)
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


def _whole_numbers(value: Any) -> Any:
    """protobuf Struct numbers are doubles: show 220.0 months as 220 again."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _whole_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_numbers(v) for v in value]
    return value


def _query(args: argparse.Namespace) -> int:
    req = _service_request(args)
    if req is None:
        return 2
    with _gateway_channel(args) as ch:
        stub = exchange_pb2_grpc.ExchangeStub(ch)
        try:
            resp = stub.Query(exchange_pb2.QueryRequest(request=req), timeout=args.timeout)
        except grpc.RpcError as err:
            _print_rpc_error(err)
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


def _submit(args: argparse.Namespace) -> int:
    req = _service_request(args)
    if req is None:
        return 2
    submit = exchange_pb2.SubmitRequest(request=req)
    if args.ttl:
        submit.time_to_live.FromMilliseconds(int(args.ttl * 1000))
    with _gateway_channel(args) as ch:
        stub = exchange_pb2_grpc.ExchangeStub(ch)
        try:
            r = stub.Submit(submit, timeout=args.timeout)
        except grpc.RpcError as err:
            _print_rpc_error(err)
            return 1
        out = {
            "case_no": r.case_no,
            "message_id": r.message_id,
            "accepted_at": r.accepted_at.ToDatetime().isoformat() + "Z",
            "request_digest": r.request_digest.hex(),
            "trace_id": r.trace_id,
            "replayed": r.replayed,
        }
        print(json.dumps(out, ensure_ascii=False, indent=2), flush=True)
        if args.watch:
            return _watch(stub, r.case_no, 0, args.watch_timeout)
    return 0


def _event_line(ev: exchange_pb2.CaseEvent) -> str:
    status = exchange_pb2.CaseStatus.Name(ev.status).removeprefix("CASE_STATUS_") if ev.status else "-"
    delivery = exchange_pb2.DeliveryState.Name(ev.delivery_state).removeprefix("DELIVERY_STATE_")
    when = ev.occurred_at.ToDatetime().isoformat(timespec="milliseconds") + "Z"
    local = f"{ev.local_system}:{ev.local_code}" if ev.local_code else "-"
    problem = f"  {ev.problem.reason}: {ev.problem.message}" if ev.problem.reason else ""
    return f"{ev.sequence:>3}  {when}  {ev.status:>2} {status:<24} {local:<16} {delivery}{problem}"


def _watch(stub: exchange_pb2_grpc.ExchangeStub, case_no: str, after: int, timeout: float) -> int:
    try:
        for item in stub.WatchCase(
            exchange_pb2.WatchCaseRequest(case_no=case_no, after_sequence=after), timeout=timeout
        ):
            print(_event_line(item.event), flush=True)
    except grpc.RpcError as err:
        _print_rpc_error(err)
        return 1
    return 0


def _case(args: argparse.Namespace) -> int:
    with _gateway_channel(args) as ch:
        stub = exchange_pb2_grpc.ExchangeStub(ch)
        if args.case_command == "watch":
            return _watch(stub, args.case_no, args.after, args.timeout)
        try:
            case = stub.GetCase(exchange_pb2.GetCaseRequest(case_no=args.case_no), timeout=args.timeout).case
        except grpc.RpcError as err:
            _print_rpc_error(err)
            return 1
    print(json.dumps(json_format.MessageToDict(case), ensure_ascii=False, indent=2))
    return 0


def _send_status(args: argparse.Namespace) -> int:
    if missing_node(args, f"case {args.case_command}"):
        return 2
    cfg = tool_config(args)
    update = StatusUpdate(args.status, args.local_code, args.local_system, args.note)

    async def run() -> int:
        nc = await tool_nats(cfg, "report")
        state = ConnectorState(cfg.path(cfg.connector.state_store))
        try:
            await state.open()
            async with store_for(cfg) as ledger:
                registry = load_registry(cfg)
                case_events = CaseEvents(
                    cfg,
                    registry=registry,
                    secrets=load_secrets(cfg, registry),
                    ledger=ledger,
                    state=state,
                    js=await ensure_streams(nc, cfg.region.code, replicas=cfg.nats.stream_replicas),
                )
                events = await case_events.report_status(args.case_no, [update])
        finally:
            await state.close()
            await nc.close()
        print(
            f"case {args.case_no}: status {args.status} sent as event {events[-1].seq} "
            f"({events[-1].event_id})"
        )
        return 0

    return asyncio.run(run())
