"""``tongban query``, ``tongban submit`` and ``tongban case``: a partner's calls to its gateway, and
the handling region's later case statuses and deliveries.

``tongban case send-status`` is a client of the connector's back-end API (``CaseBackend.ReportStatus``,
docs/backend-api.md), as the region's case system is: the connector signs the status and sends it
back. It was ``tongban case report``, a name that overlapped ``tongban report`` (a region's exchange
statistics); ``report`` still works, hidden from the help, for operators' scripts. ``tongban case
deliveries`` lists what waits for the case system (and what the webhook gave up on).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import grpc
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from connectors.backend_api import DeliveryQueue, Row, State
from tongban.core.catalogue import Catalogue
from tongban.ops.cli.common import (
    Subparsers,
    channel,
    missing_node,
    node_flags,
    tls_flags,
    tool_config,
)
from tongban.v1 import backend_pb2, backend_pb2_grpc, exchange_pb2, exchange_pb2_grpc

SEND_STATUS = "send-status"
"""The case command of the handling region; ``report`` is its former name, kept as a hidden alias."""
SEND_STATUS_ALIASES = ("report",)
_MISSING_KINDS = {
    "material": exchange_pb2.MISSING_ITEM_KIND_MATERIAL,
    "field": exchange_pb2.MISSING_ITEM_KIND_FIELD,
}
_ANY_HOST = ("", "0.0.0.0", "::", "[::]")


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
    csub = cs.add_subparsers(
        dest="case_command", required=True, metavar=f"{{get,watch,{SEND_STATUS},deliveries}}"
    )
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
        rp.add_argument(
            "--missing",
            action="append",
            default=[],
            metavar="KIND:NAME[:REASON]",
            help="with --status 6 补正: what the applicant must supply; KIND is material or field",
        )
        rp.add_argument(
            "--api",
            default="",
            help="host:port of the connector's back-end API (default: [backend_api] of the node config)",
        )
        rp.add_argument(
            "--report-id",
            default="",
            help="the local system's id of this report: sending it again reports once (safe to retry)",
        )
        rp.add_argument("--timeout", type=float, default=10.0, help="deadline in seconds (default 10)")
        node_flags(rp)
        tls_flags(rp)
        rp.set_defaults(func=_send_status)

    dl = csub.add_parser(
        "deliveries", help="handling region: the cases waiting for the case system (back-end API)"
    )
    dl.add_argument("--state", choices=[s.value for s in State], help="only deliveries in this state")
    dl.add_argument("--limit", type=int, default=100, help="at most this many, oldest first (default 100)")
    dl.add_argument("--requeue", default="", metavar="DELIVERY_ID", help="put a dead delivery back")
    node_flags(dl)
    dl.set_defaults(func=_deliveries)


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


def _missing_items(values: list[str]) -> list[exchange_pb2.MissingItem] | None:
    """The ``--missing KIND:NAME[:REASON]`` items, or None after saying which one is malformed."""
    items = []
    for value in values:
        kind, _, rest = value.partition(":")
        name, _, reason = rest.partition(":")
        if kind not in _MISSING_KINDS or not name:
            print(
                f"tongban case send-status: --missing {value!r} must be KIND:NAME[:REASON], "
                "KIND material or field",
                file=sys.stderr,
            )
            return None
        items.append(exchange_pb2.MissingItem(kind=_MISSING_KINDS[kind], name=name, reason=reason))
    return items


def _api_address(args: argparse.Namespace) -> str:
    """The back-end API to call: ``--api``, else the node config's ``[backend_api]`` (its port file
    when it listens on port 0).

    Raises:
        SystemExit: the config names no API, or a mutual-TLS API without ``--ca/--cert/--key``.
    """
    if args.api:
        return str(args.api)
    cfg = tool_config(args)
    api = cfg.backend_api
    if api.client_ca and not (args.ca and args.cert and args.key):
        raise SystemExit(
            "the connector's back-end API requires mutual TLS: give --ca (its server's CA), "
            "--cert and --key (a client certificate of [backend_api] client_ca)"
        )
    host, _, port = api.listen.rpartition(":")
    if api.port_file:
        try:
            port = cfg.path(api.port_file).read_text().strip()
        except OSError:
            port = port if port not in ("", "0") else ""
    if not api.listen or not port or port == "0":
        raise SystemExit(
            f"no back-end API to send to: region {cfg.region.code}'s config has no [backend_api] listen "
            "(or its connector is not running); give --api host:port"
        )
    return f"{'127.0.0.1' if host in _ANY_HOST else host}:{port}"


def _send_status(args: argparse.Namespace) -> int:
    if not args.api and missing_node(args, f"case {args.case_command}"):
        return 2
    if not 1 <= args.status <= 15:
        print(f"tongban case {args.case_command}: --status must be a BLZT code, 1 to 15", file=sys.stderr)
        return 2
    missing = _missing_items(args.missing)
    if missing is None:
        return 2
    request = backend_pb2.ReportStatusRequest(
        case_no=args.case_no,
        status=args.status,
        local_code=args.local_code,
        local_system=args.local_system,
        note=args.note,
        missing=missing,
        report_id=args.report_id,
    )
    with channel(_api_address(args), ca=args.ca, cert=args.cert, key=args.key) as ch:
        try:
            r = backend_pb2_grpc.CaseBackendStub(ch).ReportStatus(request, timeout=args.timeout)
        except grpc.RpcError as err:
            _print_rpc_error(err)
            return 2 if err.code() == grpc.StatusCode.INVALID_ARGUMENT else 1
    print(f"case {args.case_no}: status {args.status} sent as event {r.sequence} ({r.event_id})")
    return 0


def _delivery_line(r: Row) -> str:
    def when(s: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(s)) if s else "-"

    local = f"{r.local_system}:{r.local_code}" if r.local_code or r.local_system else "-"
    return (
        f"{r.delivery_id}  {r.case_no}  {r.service_code:<14} {r.state.value:<7} "
        f"{r.attempts:>3} {r.push_attempts:>3}  {when(r.received_s)}  {when(r.done_s)}  "
        f"{r.acked_via or '-':<7} {local}"
    )


def _deliveries(args: argparse.Namespace) -> int:
    if missing_node(args, "case deliveries"):
        return 2
    cfg = tool_config(args)
    path = cfg.path(cfg.backend_api.store)
    if not path.exists():
        print(f"no deliveries: {path} does not exist (no back-end API has run here)", file=sys.stderr)
        return 1

    async def run() -> int:
        queue = DeliveryQueue(path)
        await queue.open()
        try:
            if args.requeue:
                try:
                    back = await queue.requeue(args.requeue)
                except KeyError:
                    print(f"no delivery {args.requeue}", file=sys.stderr)
                    return 1
                print(
                    f"delivery {args.requeue}: " + ("back in the queue" if back else "not dead, left as is")
                )
                return 0 if back else 1
            rows = await queue.rows(State(args.state) if args.state else None, limit=args.limit)
        finally:
            await queue.close()
        print(
            "delivery_id                 case_no                     service        state   att web  "
            "received              done                  via     local"
        )
        for r in rows:
            print(_delivery_line(r))
        return 0

    return asyncio.run(run())
