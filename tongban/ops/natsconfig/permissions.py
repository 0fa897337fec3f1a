"""Who may do what on NATS: the hub's permissions for each region's leafnode user, and on a
region's own nats-server the permissions of each process role's user (the package docstring says why)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from tongban.core import subjects
from tongban.runtime import live_catalogue, live_registry, streams
from tongban.runtime.natsroles import NatsRole

JS_API_DENY: Final = "$JS.>"
"""Every JetStream API (and its acks) is denied across the hub, in both directions."""


# -- the hub: one user per region -------------------------------------------------------------------


def _inbound(region: str, sender: str | None = None) -> list[str]:
    """Subjects a region is addressed on across the hub. For one ``sender``, checkpoints only on
    the subject that names the sender: a witness takes the origin from the subject, so the hub must
    not let one region publish checkpoints under another's name."""
    return [
        subjects.rpc_wildcard(region),
        subjects.request_wildcard(region),
        subjects.event_wildcard(region),
        subjects.ping_subject(region),
        subjects.checkpoint_wildcard(region)
        if sender is None
        else subjects.checkpoint_subject(region, sender),
        subjects.ledger_proof_subject(region),
    ]


def permissions(region: str, regions: Sequence[str]) -> dict[str, object]:
    """The hub-side permissions of ``region``'s leafnode user among ``regions``."""
    others = [r for r in regions if r != region]
    return {
        "publish": {
            "allow": [
                *(s for other in others for s in _inbound(other, sender=region)),
                *(f"{subjects.inbox_prefix(other)}.>" for other in others),
            ],
            "deny": [JS_API_DENY],
        },
        "subscribe": {
            "allow": [*_inbound(region), f"{subjects.inbox_prefix(region)}.>"],
            "deny": [JS_API_DENY],
        },
    }


def hub_users(public_keys: Mapping[str, str]) -> list[dict[str, object]]:
    """The hub's ``authorization.users``: one NKey user per region, leafnode connections only."""
    regions = list(public_keys)
    return [
        {
            "nkey": key,
            "permissions": permissions(region, regions),
            "allowed_connection_types": ["LEAFNODE"],
        }
        for region, key in public_keys.items()
    ]


# -- a region's own server: one user per process role ---------------------------------------------


def _js_api(region: str, *calls: str) -> list[str]:
    """JetStream API subjects of ``calls`` in ``region``'s own domain. tongban's clients name the
    domain (``$JS.<code>.API.…``, ``tongban.runtime.streams.jetstream``), and the region's server maps that
    to ``$JS.API.…`` *before* it checks permissions (2.15.1), so both forms are granted, call by
    call: the same power, whichever order another server version checks in."""
    return [f"{api}.{call}" for call in calls for api in ("$JS.API", f"$JS.{region}.API")]


def _js_acks(stream: str, consumer: str) -> list[str]:
    """Ack subjects of one durable consumer, in both reply formats nats-server uses (without and
    with the domain and account-hash tokens)."""
    return [f"$JS.ACK.{stream}.{consumer}.>", f"$JS.ACK.*.*.{stream}.{consumer}.>"]


def _consumes(region: str, stream: str, durable: str) -> list[str]:
    """Create-or-update, bind, fetch from and ack one durable pull consumer, nothing else."""
    return [
        *_js_api(
            region,
            f"CONSUMER.DURABLE.CREATE.{stream}.{durable}",
            f"CONSUMER.INFO.{stream}.{durable}",
            f"CONSUMER.MSG.NEXT.{stream}.{durable}",
        ),
        *_js_acks(stream, durable),
    ]


def _ensures_streams(region: str) -> list[str]:
    """``tongban.runtime.streams.ensure_streams``: every process of a region creates its streams at start,
    or updates them to the definitions of record."""
    names = [s.name for s in streams.region_streams(region)]
    return _js_api(region, *(f"STREAM.{op}.{n}" for n in names for op in ("CREATE", "UPDATE")))


def _registry_bucket(region: str) -> list[str]:
    """The region's registry and catalogue buckets (``tongban.runtime.live_registry``,
    ``tongban.runtime.live_catalogue``): create them if missing, read (the history too), put (a node
    repairs an older document), watch (an ordered push consumer with flow control)."""
    out: list[str] = []
    for bucket in (live_registry.bucket_name(region), live_catalogue.bucket_name(region)):
        stream = f"KV_{bucket}"
        out += [
            f"$KV.{bucket}.>",
            *_js_api(
                region,
                f"STREAM.INFO.{stream}",
                f"STREAM.CREATE.{stream}",
                f"STREAM.MSG.GET.{stream}",
                f"DIRECT.GET.{stream}",
                f"DIRECT.GET.{stream}.>",
                f"CONSUMER.CREATE.{stream}",
                f"CONSUMER.CREATE.{stream}.>",
                f"CONSUMER.INFO.{stream}.*",
                f"CONSUMER.DELETE.{stream}.*",
            ),
            f"$JS.FC.{stream}.>",
        ]
    return out


def client_permissions(region: str, role: NatsRole) -> dict[str, object]:
    """What ``role`` may do on ``region``'s own nats-server (``{}``: the admin, everything).

    Cross-region reach stays the hub's business (:func:`permissions`): subjects of other regions are
    granted here by wildcard, and the hub narrows them to what the region may send. Replies to a
    request a role answers go out through ``allow_responses`` (once per request received, within the
    default 2 minutes): no role may publish into another inbox at will.
    """
    p = subjects.PREFIX
    inbox = f"{subjects.client_inbox_prefix(region, role.value)}.>"
    out, evt = subjects.outbound_stream_name(region), subjects.event_stream_name(region)
    inbound, dlq = subjects.inbound_stream_name(region), subjects.dlq_stream_name(region)
    if role is NatsRole.ADMIN:
        return {}
    if role is NatsRole.GATEWAY:
        publish = [
            f"{p}.rpc.*.>",  # Query
            f"{p}.ping.*",
            subjects.outbound_filter(region, subjects.OutKind.REQUEST),  # Submit, into OUT_
            f"{p}.req.*.>",  # the forwarder of requests
            f"{p}.ckpt.*.{region}",  # checkpoints for other regions' witnesses, under its own name
            f"{p}.lproof.*",  # proofs and entries asked of other regions
            subjects.case_notify_subject(region),
            *_ensures_streams(region),
            *_consumes(region, out, subjects.Durable.FORWARD_REQUESTS),
            *_consumes(region, evt, subjects.Durable.GATEWAY_EVENTS),
            *_js_api(region, f"STREAM.MSG.GET.{out}"),  # the reconciler looks a message up
            *_registry_bucket(region),
        ]
        subscribe = [
            inbox,
            subjects.checkpoint_wildcard(region),
            subjects.ledger_proof_subject(region),
            subjects.case_notify_subject(region),
        ]
    elif role is NatsRole.CONNECTOR:
        publish = [
            subjects.outbound_filter(region, subjects.OutKind.EVENT),  # status events, into OUT_
            f"{p}.evt.*.>",  # the forwarder of events
            subjects.dlq_wildcard(region),
            *_ensures_streams(region),
            *_consumes(region, inbound, subjects.Durable.CONNECTOR),
            *_consumes(region, out, subjects.Durable.FORWARD_EVENTS),
            *_registry_bucket(region),
        ]
        subscribe = [inbox, subjects.rpc_wildcard(region), subjects.ping_subject(region)]
    else:
        publish = [
            subjects.request_wildcard(region),  # dlq replay: back into IN_
            f"{p}.lproof.*",  # ledger check-receipt
            *_ensures_streams(region),
            *_registry_bucket(region),
            *_js_api(
                region,
                "INFO",
                "STREAM.NAMES",
                "STREAM.LIST",
                "STREAM.INFO.*",
                "CONSUMER.NAMES.*",
                "CONSUMER.LIST.*",
                "CONSUMER.INFO.*.*",
                f"STREAM.MSG.GET.{dlq}",
                f"STREAM.MSG.DELETE.{dlq}",
                f"STREAM.PURGE.{dlq}",
            ),
        ]
        subscribe = [inbox]
    perms: dict[str, object] = {"publish": {"allow": publish}, "subscribe": {"allow": subscribe}}
    if role in (NatsRole.GATEWAY, NatsRole.CONNECTOR):
        # Query answers and pings (connector), proofs and entries for other regions (gateway).
        perms["allow_responses"] = True
    return perms


def region_users(region: str, public_keys: Mapping[NatsRole, str]) -> list[dict[str, object]]:
    """The ``authorization.users`` of ``region``'s client port: one NKey user per role, client
    connections only (not leafnode, websocket or MQTT)."""
    users: list[dict[str, object]] = []
    for role, key in public_keys.items():
        user: dict[str, object] = {"nkey": key}
        perms = client_permissions(region, role)
        if perms:
            user["permissions"] = perms
        user["allowed_connection_types"] = ["STANDARD"]
        users.append(user)
    return users
