"""Least-privilege NATS between regions: one NKey user per region on the hub, TLS on every leafnode link.

Each region's nats-server joins the hub as a leafnode with credentials of its own: an NKey user seed
(the hub's config holds only the public key) and a client certificate from the NATS CA, which the hub
requires (``verify: true``). The hub binds each region's user to permissions that let the region

- publish only to *other* regions' inbound subjects: Query RPC ``tb.v1.rpc.<other>.>``, durable
  requests ``tb.v1.req.<other>.>``, case events ``tb.v1.evt.<other>.>``, ``tb.v1.ping.<other>``,
  ledger checkpoints for the other's witness ``tb.v1.ckpt.<other>.>`` and consistency-proof
  requests about the other's ledger ``tb.v1.lproof.<other>``,
  and replies into other regions' inboxes ``_INBOX_<other>.>`` (Query answers, and the JetStream
  PubAcks of its streams to another region's forwarder);
- subscribe only to its own: the same six subject spaces of its own code and ``_INBOX_<own>.>``;
- nothing under ``$JS.>``: no region reaches another region's JetStream API (``$JS.<code>.API.>``)
  through the hub, so none can create a consumer on another's ``IN_`` stream and read its requests.

The hub tells the leaf these permissions when it connects, and the leaf keeps its own subscriptions
and messages outside them local (nats-server's leafnode behaviour). ``allow_responses`` does not work
across a leafnode link: the hub sends the leaf only the publish/subscribe lists, not the response
permission, and the leaf silently drops the reply (2.15.1). Hence the explicit ``_INBOX_<other>.>``
publish permission: a region can write into another's inbox namespace, where replies land under
random tokens it cannot learn, but it can never subscribe there (and every reply tongban carries is a
signed envelope or a PubAck the forwarder checks against its own message id). The users are allowed
on leafnode connections only: the hub's client port accepts no region credentials.

Inside a region, its own nats-server's client port admits no anonymous client either: one NKey user
per process role (:class:`NatsRole`: gateway, connector, operator tools), each limited to the
subjects it publishes and subscribes to and to the JetStream API calls it makes on its region's
streams (:func:`client_permissions`): a gateway cannot read the inbound stream or dead letters, a
connector cannot send Query requests or checkpoints, no role can delete a stream. In production the
client port speaks TLS first (the nodes are on separate hosts); the single-machine topology keeps
it on loopback in plaintext, with the same users.

``tongban nats-config`` writes the production configs of deploy/nats/ (which reference the secrets by
path under :data:`INSTALL_DIR`) and, in a separate secrets directory, the seeds and TLS material; the
single-machine topology (:class:`tongban.ops.natsserver.Topology`) generates the same material for its
regions under its own root with :func:`ensure_secrets`.

One module per part: ``permissions`` (the hub's region users and a region's role users),
``credentials`` (the CA, certificates and seeds: :class:`Secrets`, :func:`ensure_secrets`) and
``production`` (deploy/nats/'s files: :func:`production_files`, :func:`generate`). The command is
``tongban.ops.cli.nats_config``.
"""

from tongban.ops.natsconfig.credentials import (
    CA_NAME,
    INSTALL_DIR,
    SECRETS_DIR,
    SEED_ENV,
    LinkSecurity,
    Secrets,
    ensure_secrets,
    issue_leaf,
)
from tongban.ops.natsconfig.permissions import (
    JS_API_DENY,
    client_permissions,
    hub_users,
    permissions,
    region_users,
)
from tongban.ops.natsconfig.production import (
    HUB_DOMAIN,
    HUB_NODES,
    LOOPBACK,
    NODES,
    authorization_conf,
    conf_value,
    generate,
    production_files,
    region_authorization_conf,
    region_hosts,
)

__all__ = [
    "CA_NAME",
    "HUB_DOMAIN",
    "HUB_NODES",
    "INSTALL_DIR",
    "JS_API_DENY",
    "LOOPBACK",
    "NODES",
    "SECRETS_DIR",
    "SEED_ENV",
    "LinkSecurity",
    "Secrets",
    "authorization_conf",
    "client_permissions",
    "conf_value",
    "ensure_secrets",
    "generate",
    "hub_users",
    "issue_leaf",
    "permissions",
    "production_files",
    "region_authorization_conf",
    "region_hosts",
    "region_users",
]
