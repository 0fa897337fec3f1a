"""The NATS secrets of a set of regions: the CA, TLS certificates of the hub link and of a region's
client port, and NKey seeds (a region's leafnode user, one per process role), made once and kept."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Final

from ledger.files import write_atomically
from tongban.core import subjects
from tongban.ops.natsconfig.permissions import hub_users
from tongban.runtime import certs
from tongban.runtime.natsroles import PROCESS_ROLES, NatsRole, new_user_seed, public_key

INSTALL_DIR: Final = PurePosixPath("/etc/tongban/nats")
"""Where a production node keeps its NATS secrets; the committed configs reference files here."""

SECRETS_DIR: Final = Path(".tongban") / "nats-secrets"
"""Default directory ``tongban nats-config`` writes secrets to (outside deploy/, never committed)."""

CA_NAME: Final = "tongban NATS CA"

SEED_ENV: Final = "TB_LEAF_NKEY"
"""Environment variable a production region node reads its NKey seed from. nats-server resolves a
``$VAR`` its config does not define from the environment; an ``include`` cannot carry the seed instead,
because nats-server resolves even an absolute include path relative to the including file."""


@dataclass(frozen=True)
class Secrets:
    """The NATS secrets of a set of regions in one directory.

    Layout (each node kind's directory is what goes to :data:`INSTALL_DIR` on that kind of node):
    ``ca.key``/``ca.crt`` the CA (keep ``ca.key`` offline); ``hub/`` the hub's ``hub.key``,
    ``hub.crt`` and ``ca.crt``; ``<code>/`` a region's ``leaf.key``, ``leaf.crt``, ``ca.crt``, its
    NKey seed ``leaf.nk`` and ``leaf-nkey.env`` (the seed as the environment variable
    :data:`SEED_ENV`, for systemd's ``EnvironmentFile=``), and, for its client port's TLS,
    ``server.key``/``server.crt``. ``clients/<code>/`` is not for the NATS nodes: one NKey seed per
    process role (``gateway.nk``, ``connector.nk``, ``operator.nk``) and ``ca.crt``, each seed to
    the hosts that run that role only.
    """

    root: Path
    regions: tuple[str, ...]
    roles: tuple[NatsRole, ...] = PROCESS_ROLES
    """The client roles each region has a seed for (the single-machine topology adds the admin)."""

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def hub_dir(self) -> Path:
        return self.root / "hub"

    def region_dir(self, region: str) -> Path:
        return self.root / region

    def seed_file(self, region: str) -> Path:
        return self.region_dir(region) / "leaf.nk"

    def seed(self, region: str) -> bytes:
        return self.seed_file(region).read_bytes().strip()

    def public_keys(self) -> dict[str, str]:
        return {r: public_key(self.seed(r)) for r in self.regions}

    def clients_dir(self, region: str) -> Path:
        return self.root / "clients" / region

    def client_seed_file(self, region: str, role: NatsRole) -> Path:
        """The NKey seed ``role`` connects to ``region``'s nats-server with."""
        return self.clients_dir(region) / f"{role.value}.nk"

    def client_public_keys(self, region: str) -> dict[NatsRole, str]:
        return {
            role: public_key(self.client_seed_file(region, role).read_bytes().strip()) for role in self.roles
        }

    def all_client_public_keys(self) -> dict[str, dict[NatsRole, str]]:
        """Region → role → public key."""
        return {r: self.client_public_keys(r) for r in self.regions}

    def hub_link(self) -> LinkSecurity:
        """The hub's TLS files and region users."""
        d = self.hub_dir
        users = tuple(hub_users(self.public_keys()))
        return LinkSecurity(d / "ca.crt", d / "hub.crt", d / "hub.key", users=users)

    def leaf_link(self, region: str) -> LinkSecurity:
        """``region``'s leafnode client certificate and NKey seed."""
        d = self.region_dir(region)
        seed = self.seed(region).decode()
        return LinkSecurity(d / "ca.crt", d / "leaf.crt", d / "leaf.key", nkey_seed=seed)


def _write_secret(path: Path, data: bytes) -> None:
    write_atomically(path, data, mode=0o600)


def issue_leaf(ca: certs.Issued, region: str) -> certs.Issued:
    """A region leafnode's client certificate (its identity on the link: ``<code>.leaf.tongban``)."""
    return certs.issue_named_client(ca, f"{region}.leaf.tongban")


@dataclass(frozen=True)
class LinkSecurity:
    """What one server of the single-machine topology needs for its side of a hub link."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    nkey_seed: str = ""
    """A leaf: its region's NKey user seed."""
    users: tuple[dict[str, object], ...] = ()
    """The hub: :func:`hub_users` of every region."""


def ensure_secrets(
    root: Path,
    regions: Sequence[str],
    hub_hosts: Sequence[str],
    *,
    roles: Sequence[NatsRole] = PROCESS_ROLES,
    region_hosts: Callable[[str], Sequence[str]] | None = None,
) -> Secrets:
    """The CA, the hub's server certificate for ``hub_hosts``, and per region an NKey seed and a
    client certificate for its hub link and an NKey seed per client role in ``roles``, under
    ``root``; with ``region_hosts`` also a server certificate for each region's client port, valid
    for ``region_hosts(<code>)``. What exists is kept (a restart keeps its credentials); what is
    missing is made. Private keys and seeds are written mode 0600.
    """
    for r in regions:
        subjects.inbox_prefix(r)  # a valid subject token
    clients = [root / "clients", *(root / "clients" / r for r in regions)]
    for d in (root, root / "hub", *(root / r for r in regions), *clients):
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o700)
    secrets = Secrets(root, tuple(regions), tuple(roles))
    if (root / "ca.key").exists():
        ca = certs.load(root, "ca")
    else:
        ca = certs.create_ca(CA_NAME)
        certs.write(ca, root, "ca")
    ca_pem = ca.cert_pem
    if not (secrets.hub_dir / "hub.crt").exists():
        certs.write(certs.issue_server(ca, list(hub_hosts), days=3650), secrets.hub_dir, "hub")
    write_atomically(secrets.hub_dir / "ca.crt", ca_pem)
    for r in regions:
        d = secrets.region_dir(r)
        if not (d / "leaf.crt").exists():
            certs.write(issue_leaf(ca, r), d, "leaf")
        write_atomically(d / "ca.crt", ca_pem)
        if not secrets.seed_file(r).exists():
            _write_secret(secrets.seed_file(r), new_user_seed() + b"\n")
        seed = secrets.seed(r)
        public_key(seed)  # refuse a damaged seed file now, not at the server's start
        _write_secret(d / "leaf-nkey.env", f"{SEED_ENV}={seed.decode()}\n".encode())
        if region_hosts is not None and not (d / "server.crt").exists():
            certs.write(certs.issue_server(ca, list(region_hosts(r)), days=3650), d, "server")
        write_atomically(secrets.clients_dir(r) / "ca.crt", ca_pem)
        for role in roles:
            path = secrets.client_seed_file(r, role)
            if not path.exists():
                _write_secret(path, new_user_seed() + b"\n")
        secrets.client_public_keys(r)  # every seed readable and valid now
    return secrets
