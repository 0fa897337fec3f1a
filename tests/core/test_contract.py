"""The generated code matches protos/, the wire names keep their two subject spaces apart, and the
nats-server configs we render are accepted by the real binary."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from tongban.core import subjects
from tongban.ops import natsconfig
from tongban.ops.natsserver import ServerSpec, check_binary, render_config
from tongban.runtime import streams

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_current(tmp_path: Path) -> None:
    protos = sorted((ROOT / "protos" / "tongban" / "v1").glob("*.proto"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            str(ROOT / "protos"),
            f"--python_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            *map(str, protos),
        ],
        check=True,
    )
    for generated in sorted((tmp_path / "tongban" / "v1").glob("*.py")):
        committed = ROOT / "tongban" / "v1" / generated.name
        assert committed.read_bytes() == generated.read_bytes(), f"{generated.name} is stale: run make protos"


def test_stream_subjects_never_cover_rpc_subjects() -> None:
    for region in ("440300", "320200"):
        assert not streams.stream_subjects_overlap_rpc(streams.inbound_stream(region))
        rpc = subjects.rpc_subject(region, "SBJFJLCX0001")
        assert not rpc.startswith(subjects.request_wildcard(region)[:-1])


@pytest.mark.parametrize("bad", ["", "a.b", "*", ">", "x y", "3202>"])
def test_subject_tokens_are_checked(bad: str) -> None:
    with pytest.raises(ValueError):
        subjects.rpc_subject(bad, "SBJFJLCX0001")


@pytest.mark.parametrize(
    "spec",
    [
        ServerSpec(name="hub"),
        ServerSpec(name="leaf-440300", domain="440300", hub_leaf_url="nats-leaf://127.0.0.1:7422"),
    ],
    ids=["hub", "leaf"],
)
def test_rendered_configs_pass_nats_server_t(tmp_path: Path, spec: ServerSpec) -> None:
    conf = tmp_path / "server.conf"
    secrets = natsconfig.ensure_secrets(tmp_path / "secrets", ["440300"], ["127.0.0.1"])
    link = secrets.hub_link() if spec.is_hub else secrets.leaf_link("440300")
    users = (
        () if spec.is_hub else tuple(natsconfig.region_users("440300", secrets.client_public_keys("440300")))
    )
    spec = dataclasses.replace(spec, security=link, client_users=users)
    conf.write_text(render_config(spec, tmp_path / "js"))
    result = subprocess.run(
        [str(check_binary()), "-t", "-c", str(conf)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr


async def test_dev_topology_runs_the_deploy_templates(tmp_path: Path) -> None:
    """The servers tests and `tongban dev` start are deploy/nats/dev rendered: each region its own
    JetStream domain, fsync on every write, a leafnode of a hub without JetStream."""
    import json
    import urllib.request

    from tongban.ops.natsserver import Topology

    def varz(url: str) -> dict[str, object]:
        with urllib.request.urlopen(f"{url}/varz", timeout=5) as resp:
            return json.loads(resp.read())  # type: ignore[no-any-return]

    async with Topology(tmp_path / "nats", ["440300"]) as topo:
        leaf = varz(topo.leaves["440300"].monitor_url)
        hub = varz(topo.hub.monitor_url)
    js = leaf["jetstream"]["config"]  # type: ignore[index]
    assert js["domain"] == "440300" and js["sync_always"] is True
    assert hub.get("jetstream", {}).get("config") is None  # type: ignore[union-attr]
