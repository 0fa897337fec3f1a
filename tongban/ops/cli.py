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

from tongban.runtime.natsroles import NatsRole
from tongban.runtime.node import connect_nats

DEFAULT_STATE = ".tongban"


def _cmd_dev(args: argparse.Namespace) -> int:
    from tongban.ops.dev import run_dev
    from tongban.ops.natsserver import NatsServerError
    from tongban.runtime.telemetry import configure_logging

    configure_logging(fmt="console", level="warning")
    try:
        asyncio.run(run_dev(Path(args.state_dir), otlp_endpoint=args.otlp, log_format=args.log_format))
    except (NatsServerError, RuntimeError, TimeoutError, OSError) as exc:
        print(f"tongban dev: {exc}", file=sys.stderr)
        return 1
    return 0


def _load_config(path: str) -> Any:
    from tongban.runtime.config import Config
    from tongban.runtime.telemetry import configure_logging

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


def _channel(args: argparse.Namespace) -> Any:
    """A channel to ``--gateway``: mutual TLS with ``--ca/--cert/--key``, else plaintext (dev mode)."""
    import grpc

    tls = (args.ca, args.cert, args.key)
    if not any(tls):
        return grpc.insecure_channel(args.gateway)
    if not all(tls):
        raise SystemExit("give --ca, --cert and --key together (mutual TLS)")
    pem = {}
    for flag, path in (("--ca", args.ca), ("--cert", args.cert), ("--key", args.key)):
        try:
            pem[flag] = Path(path).read_bytes()
        except OSError as exc:
            raise SystemExit(f"cannot read {flag} {path}: {exc.strerror or exc}") from None
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pem["--ca"], private_key=pem["--key"], certificate_chain=pem["--cert"]
    )
    return grpc.secure_channel(args.gateway, credentials)


def _tls_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ca", default="", help="CA certificate of the gateway (mutual TLS)")
    p.add_argument("--cert", default="", help="the partner system's client certificate")
    p.add_argument("--key", default="", help="its private key")


def _cmd_certs(args: argparse.Namespace) -> int:
    from tongban.runtime import certs

    out = Path(args.dir)
    if args.certs_command == "init":
        if (out / "ca.key").exists() and not args.force:
            print(f"{out / 'ca.key'} exists: keeping it (--force makes a new CA)", file=sys.stderr)
            return 1
        key, crt = certs.write(certs.create_ca(args.name), out, "ca")
    elif args.certs_command == "server":
        key, crt = certs.write(
            certs.issue_server(certs.load(out, "ca"), args.host, days=args.days), out, args.stem
        )
    else:
        partner = certs.Partner(args.region, args.system)
        issued = certs.issue_client(certs.load(out, "ca"), partner, days=args.days)
        key, crt = certs.write(issued, out, args.stem or f"{args.region}-{args.system}")
    print(f"wrote {crt} and {key}")
    return 0


def _service_request(args: argparse.Namespace) -> Any:
    """The ServiceRequest the query/submit flags describe, or None after printing the problem."""
    from tongban.core.catalogue import Catalogue
    from tongban.v1 import exchange_pb2

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


def _print_rpc_error(err: Any) -> None:
    """Status, reason and field violations of a failed call, on stderr."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

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


def _cmd_query(args: argparse.Namespace) -> int:
    import grpc
    from google.protobuf import json_format

    from tongban.v1 import exchange_pb2, exchange_pb2_grpc

    req = _service_request(args)
    if req is None:
        return 2
    with _channel(args) as channel:
        stub = exchange_pb2_grpc.ExchangeStub(channel)
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


def _cmd_submit(args: argparse.Namespace) -> int:
    import grpc

    from tongban.v1 import exchange_pb2, exchange_pb2_grpc

    req = _service_request(args)
    if req is None:
        return 2
    submit = exchange_pb2.SubmitRequest(request=req)
    if args.ttl:
        submit.time_to_live.FromMilliseconds(int(args.ttl * 1000))
    with _channel(args) as channel:
        stub = exchange_pb2_grpc.ExchangeStub(channel)
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


def _event_line(ev: Any) -> str:
    from tongban.v1 import exchange_pb2

    status = exchange_pb2.CaseStatus.Name(ev.status).removeprefix("CASE_STATUS_") if ev.status else "-"
    delivery = exchange_pb2.DeliveryState.Name(ev.delivery_state).removeprefix("DELIVERY_STATE_")
    when = ev.occurred_at.ToDatetime().isoformat(timespec="milliseconds") + "Z"
    local = f"{ev.local_system}:{ev.local_code}" if ev.local_code else "-"
    problem = f"  {ev.problem.reason}: {ev.problem.message}" if ev.problem.reason else ""
    return f"{ev.sequence:>3}  {when}  {ev.status:>2} {status:<24} {local:<16} {delivery}{problem}"


def _watch(stub: Any, case_no: str, after: int, timeout: float) -> int:
    import grpc

    from tongban.v1 import exchange_pb2

    try:
        for item in stub.WatchCase(
            exchange_pb2.WatchCaseRequest(case_no=case_no, after_sequence=after), timeout=timeout
        ):
            print(_event_line(item.event), flush=True)
    except grpc.RpcError as err:
        _print_rpc_error(err)
        return 1
    return 0


def _cmd_case(args: argparse.Namespace) -> int:
    import grpc
    from google.protobuf import json_format

    from tongban.v1 import exchange_pb2, exchange_pb2_grpc

    with _channel(args) as channel:
        stub = exchange_pb2_grpc.ExchangeStub(channel)
        if args.case_command == "watch":
            return _watch(stub, args.case_no, args.after, args.timeout)
        try:
            case = stub.GetCase(exchange_pb2.GetCaseRequest(case_no=args.case_no), timeout=args.timeout).case
        except grpc.RpcError as err:
            _print_rpc_error(err)
            return 1
    print(json.dumps(json_format.MessageToDict(case), ensure_ascii=False, indent=2))
    return 0


def _node_config(args: argparse.Namespace) -> Any:
    from tongban.runtime.config import Config

    path = Path(args.config) if args.config else Path(args.state_dir) / args.region / "node.toml"
    return Config.load(path)


def _node_flags(p: argparse.ArgumentParser) -> None:
    """Which region's node a tool acts for: its config, or a dev stack region."""
    p.add_argument("--config", default="", help="the region's node config (TOML)")
    p.add_argument("--region", default="", help="dev stack region (config at <state-dir>/<region>/node.toml)")
    p.add_argument("--state-dir", default=DEFAULT_STATE)


async def _tool_nats(cfg: Any, tool: str) -> Any:
    """A tool's connection to its region's NATS as the operator-tools user (``[nats]
    operator_nkey_seed``): quiet about its own disconnect at the end."""

    async def quiet() -> None:
        return None

    return await connect_nats(
        cfg, role=NatsRole.OPERATOR, name=f"tongban-{tool}-{cfg.region.code}", disconnected_cb=quiet
    )


def _tool_config(args: argparse.Namespace) -> Any:
    """The node config of a tool command; its logs go to stderr, errors only."""
    from tongban.runtime.telemetry import configure_logging

    configure_logging(fmt="console", level="error", stream=sys.stderr)
    return _node_config(args)


def _cmd_case_report(args: argparse.Namespace) -> int:
    from connectors.adapters import StatusUpdate
    from connectors.cases import CaseWorker
    from connectors.runtime import Connector
    from connectors.state import ConnectorState
    from tongban.core.catalogue import Catalogue
    from tongban.runtime.ledgers import store_for
    from tongban.runtime.node import load_registry, load_secrets

    cfg = _tool_config(args)
    update = StatusUpdate(args.status, args.local_code, args.local_system, args.note)

    async def run() -> int:
        nc = await _tool_nats(cfg, "report")
        state = ConnectorState(cfg.path(cfg.connector.state_store))
        try:
            await state.open()
            async with store_for(cfg) as ledger:
                connector = Connector(
                    cfg,
                    registry=(registry := load_registry(cfg)),
                    secrets=load_secrets(cfg, registry),
                    catalogue=Catalogue.load(),
                    adapters={},
                    ledger=ledger,
                    nc=nc,
                    durable=False,
                )
                worker = CaseWorker(connector, state, nc)
                await worker.attach()
                events = await worker.report_status(args.case_no, [update])
        finally:
            await state.close()
            await nc.close()
        print(
            f"case {args.case_no}: status {args.status} sent as event {events[-1].seq} "
            f"({events[-1].event_id})"
        )
        return 0

    return asyncio.run(run())


def _cmd_dlq(args: argparse.Namespace) -> int:
    from ledger import EntryDraft, Event
    from tongban.ops import dlq
    from tongban.runtime.ledgers import store_for

    cfg = _tool_config(args)
    region = cfg.region.code

    async def run() -> int:
        nc = await _tool_nats(cfg, "dlq")
        try:
            if args.dlq_command == "list":
                letters = await dlq.list_dead_letters(nc, region, limit=args.limit)
                if args.json:
                    print(json.dumps([d.__dict__ for d in letters], ensure_ascii=False, indent=2))
                    return 0
                print(f"{len(letters)} dead letter(s) in DLQ_{region}")
                for d in letters:
                    print(
                        f"  {d.seq:>6}  {d.dead_lettered_at}  {d.message_id}  {d.service_code}  "
                        f"{d.reason}  attempts={d.attempts}"
                    )
                return 0
            dead = await dlq.replay(nc, region, args.id)
            # An operator's action is on the record, like every other step.
            async with store_for(cfg) as ledger:
                await ledger.append(
                    EntryDraft(
                        Event.RESENT,
                        dead.message_id or f"dlq:{args.id}",
                        region,
                        dead.service_code,
                        b"",
                        "",
                        f"dlq-replay seq={args.id} reason={dead.reason}",
                    )
                )
            print(f"replayed dead letter {args.id} ({dead.message_id}, {dead.service_code}) to IN_{region}")
            return 0
        finally:
            await nc.close()

    return asyncio.run(run())


def _cmd_maintenance(args: argparse.Namespace) -> int:
    cfg = _tool_config(args)
    path = cfg.path(cfg.gateway.maintenance_file)
    if args.state == "on":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    elif args.state == "off":
        path.unlink(missing_ok=True)
    on = path.exists()
    print(
        f"gateway of {cfg.region.code}: maintenance {'ON' if on else 'off'} ({path}); "
        f"the gateway follows within {cfg.gateway.maintenance_poll_s:g} s"
    )
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
    d.add_argument(
        "--log-format",
        choices=("console", "json"),
        default="console",
        help="the processes' log files: human-friendly lines (default) or one JSON object per line",
    )
    d.set_defaults(func=_cmd_dev)

    for role, func in (("gateway", _cmd_gateway), ("connector", _cmd_connector)):
        r = sub.add_parser(role, help=f"run a {role} from a config file until SIGTERM")
        r.add_argument("--config", required=True, help="TOML config file")
        r.set_defaults(func=func)

    q = sub.add_parser("query", help="call Exchange.Query on a gateway and print the verified answer")
    q.add_argument("--gateway", required=True, help="host:port of the gateway")
    _request_flags(q)
    q.add_argument("--timeout", type=float, default=10.0, help="deadline in seconds (default 10)")
    _tls_flags(q)
    q.set_defaults(func=_cmd_query)

    sm = sub.add_parser(
        "submit", help="call Exchange.Submit: hand a case to another region, print the receipt"
    )
    sm.add_argument("--ttl", type=float, default=0.0, help="seconds the case may wait (default: catalogue)")
    sm.add_argument("--watch", action="store_true", help="then stream the case's events until it ends")
    sm.add_argument("--watch-timeout", type=float, default=600.0, help="how long --watch waits (default 600)")
    sm.add_argument("--gateway", required=True, help="host:port of the gateway")
    _request_flags(sm)
    sm.add_argument("--timeout", type=float, default=10.0, help="deadline of the Submit call (default 10)")
    _tls_flags(sm)
    sm.set_defaults(func=_cmd_submit)

    cs = sub.add_parser("case", help="read or watch a case submitted through a gateway")
    csub = cs.add_subparsers(dest="case_command", required=True)
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
        _tls_flags(c)
        c.set_defaults(func=_cmd_case)

    rp = csub.add_parser("report", help="handling region: send a later status of a case (补正, 办结, ...)")
    rp.add_argument("case_no", help="case number")
    rp.add_argument(
        "--status", type=int, required=True, help="BLZT code 1-15, e.g. 6 补正（开始）, 11 办结（通过）"
    )
    rp.add_argument("--local-code", default="", help="the local system's own status code")
    rp.add_argument("--local-system", default="", help="the local system's name")
    rp.add_argument(
        "--note", default="", help="note for the collecting window (sealed: may hold personal data)"
    )
    _node_flags(rp)
    rp.set_defaults(func=_cmd_case_report)

    dq = sub.add_parser("dlq", help="a region's dead letters: list, replay")
    dsub = dq.add_subparsers(dest="dlq_command", required=True)
    for verb, text in (("list", "list the dead letters"), ("replay", "send one back to the inbound stream")):
        c = dsub.add_parser(verb, help=text)
        if verb == "replay":
            c.add_argument("id", type=int, help="dead letter id (its DLQ stream sequence, from dlq list)")
        else:
            c.add_argument("--json", action="store_true")
            c.add_argument("--limit", type=int, default=1000)
        _node_flags(c)
        c.set_defaults(func=_cmd_dlq)

    ct = sub.add_parser("certs", help="a development CA and mutual-TLS certificates (x509, ECDSA P-256)")
    ctsub = ct.add_subparsers(dest="certs_command", required=True)
    for verb, text in (
        ("init", "create the CA (ca.key, ca.crt)"),
        ("server", "a gateway's server certificate"),
        ("client", "a partner system's client certificate (identity: region + system id)"),
    ):
        c = ctsub.add_parser(verb, help=text)
        c.add_argument("--dir", default=f"{DEFAULT_STATE}/certs", help="where the CA and certificates live")
        if verb == "init":
            c.add_argument("--name", default="tongban dev CA")
            c.add_argument("--force", action="store_true", help="replace an existing CA")
        else:
            c.add_argument("--days", type=int, default=365)
        if verb == "server":
            c.add_argument("--host", action="append", required=True, help="DNS name or IP (repeat)")
            c.add_argument("--stem", default="gateway", help="file name stem (default gateway)")
        if verb == "client":
            c.add_argument("--region", required=True, help="the partner's GB/T 2260 region code")
            c.add_argument(
                "--system", required=True, help="the partner's system id, as the registry names it"
            )
            c.add_argument("--stem", default="", help="file name stem (default <region>-<system>)")
        c.set_defaults(func=_cmd_certs)

    from tongban.ops import cli_trust, natsconfig

    mt = sub.add_parser(
        "maintenance", help="a gateway in or out of maintenance (NOT_SERVING, new calls refused)"
    )
    mt.add_argument("state", choices=("on", "off", "status"))
    _node_flags(mt)
    mt.set_defaults(func=_cmd_maintenance)

    cli_trust.add_parsers(sub, _node_flags)
    natsconfig.add_parser(sub)
    from tongban.ops import cli_trace

    cli_trace.add_parser(sub, _node_flags)

    lg = sub.add_parser("ledger", help="a region's ledger: verify, prove, export, check a bundle")
    lsub = lg.add_subparsers(dest="ledger_command", required=True)
    from tongban.ops import cli_ledger

    cli_ledger.add_parsers(lsub, _node_flags)
    from tongban.ops import cli_report

    cli_report.add_parsers(sub, _node_flags)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if (
        args.command == "ledger"
        and args.ledger_command != "check-bundle"
        and not (args.region or args.config or getattr(args, "file", ""))
    ):
        print(f"tongban ledger {args.ledger_command}: give --config or --region", file=sys.stderr)
        return 2
    if (
        args.command in ("dlq", "keys", "maintenance")
        or getattr(args, "case_command", "") == "report"
        or getattr(args, "registry_command", "") == "publish"
    ) and not (args.region or args.config):
        verb = next(
            getattr(args, a)
            for a in ("dlq_command", "case_command", "registry_command", "keys_command", "command")
            if getattr(args, a, "")
        )
        print(f"tongban {args.command} {verb}: give --config or --region", file=sys.stderr)
        return 2
    from tongban.core.errors import TongbanError

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
