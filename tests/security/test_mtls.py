"""Partner authentication at the gateway: mutual TLS, the certificate names the partner.

Threat: someone who is not a registered partner system calls a region's gateway, or a partner
passes itself off as another. Control: outside dev mode the gateway only accepts TLS connections
with a client certificate from the partner CA; the partner identity (region + system id) comes
from the certificate, never from the request.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import grpc
import pytest

from tests.conftest import SZ, Pki, Stack
from tests.e2e.cases import submit_request
from tests.e2e.grpc_errors import details_of
from tests.e2e.requests import pension
from tongban.core.errors import ConfigError
from tongban.ops.devstate import DevState
from tongban.runtime import certs
from tongban.runtime.component import ComponentParts
from tongban.runtime.config import Config
from tongban.v1 import exchange_pb2, exchange_pb2_grpc


def channel(
    stack: Stack, pki: Pki, client: certs.Issued | None, *, ca: bytes | None = None
) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca or pki.ca.cert_pem,
        private_key=client.key_pem if client else None,
        certificate_chain=client.cert_pem if client else None,
    )
    ch = grpc.aio.secure_channel(stack.nodes[SZ].address, creds)
    stack.channels.append(ch)
    return ch


async def refused(ch: grpc.aio.Channel) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await exchange_pb2_grpc.ExchangeStub(ch).Query(pension(), timeout=5)
    return err.value


def handshake_refused(err: grpc.aio.AioRpcError, capfd: pytest.CaptureFixture[str], server_says: str) -> None:
    """The TLS handshake failed, so no RPC was even seen. The partner learns only that the
    connection closed; the gateway's TLS layer (gRPC core, on stderr) names the exact reason."""
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert (err.details() or "").startswith("failed to connect to all addresses")
    assert "Socket closed" in (err.details() or "")
    server_log = capfd.readouterr().err
    assert "Handshake failed with error SSL_ERROR_SSL: error:" in server_log
    assert server_says in server_log


async def nothing_recorded(stack: Stack) -> None:
    assert await stack.nodes[SZ].ledger.size() == 0
    assert stack.nodes["320200"].backend_calls() == 0


async def test_partner_with_its_certificate_is_served_as_itself(tls_stack: Stack, pki: Pki) -> None:
    stub = exchange_pb2_grpc.ExchangeStub(channel(tls_stack, pki, pki.client()))
    resp = await stub.Query(pension(), timeout=10)
    assert resp.responder_region == "320200"
    receipt = await stub.Submit(submit_request(key="tls-1"), timeout=10)
    # Cases belong to the partner that submitted them: another partner cannot read them.
    other = exchange_pb2_grpc.ExchangeStub(channel(tls_stack, pki, pki.client(system="szgov-other")))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await other.GetCase(exchange_pb2.GetCaseRequest(case_no=receipt.case_no), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    got = await stub.GetCase(exchange_pb2.GetCaseRequest(case_no=receipt.case_no), timeout=5)
    assert got.case.message_id == receipt.message_id


async def test_no_client_certificate_is_refused(
    tls_stack: Stack, pki: Pki, capfd: pytest.CaptureFixture[str]
) -> None:
    err = await refused(channel(tls_stack, pki, None))
    handshake_refused(err, capfd, "PEER_DID_NOT_RETURN_A_CERTIFICATE")
    await nothing_recorded(tls_stack)


async def test_certificate_from_an_unknown_ca_is_refused(
    tls_stack: Stack, pki: Pki, capfd: pytest.CaptureFixture[str]
) -> None:
    rogue = certs.create_ca("rogue CA")
    err = await refused(channel(tls_stack, pki, certs.issue_client(rogue, certs.Partner(SZ, "szgov-ywtb"))))
    handshake_refused(err, capfd, "CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate")
    await nothing_recorded(tls_stack)


async def test_expired_certificate_is_refused(
    tls_stack: Stack, pki: Pki, capfd: pytest.CaptureFixture[str]
) -> None:
    long_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)
    err = await refused(channel(tls_stack, pki, pki.client(not_before=long_ago, days=1)))
    handshake_refused(err, capfd, "CERTIFICATE_VERIFY_FAILED: certificate has expired")
    await nothing_recorded(tls_stack)


async def test_plaintext_is_refused(tls_stack: Stack, pki: Pki) -> None:
    ch = grpc.aio.insecure_channel(tls_stack.nodes[SZ].address)
    tls_stack.channels.append(ch)
    err = await refused(ch)
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    await nothing_recorded(tls_stack)


async def test_certificate_without_a_partner_identity_is_unauthenticated(tls_stack: Stack, pki: Pki) -> None:
    anonymous = certs.issue_named_client(pki.ca, "somebody.example")  # of the CA, naming no partner
    d = details_of(await refused(channel(tls_stack, pki, anonymous)))
    assert d.code == grpc.StatusCode.UNAUTHENTICATED and d.reason == "UNAUTHENTICATED"
    await nothing_recorded(tls_stack)


async def test_partner_of_another_region_is_refused(tls_stack: Stack, pki: Pki) -> None:
    d = details_of(await refused(channel(tls_stack, pki, pki.client(region="320200", system="wxgov-ywtb"))))
    assert d.code == grpc.StatusCode.PERMISSION_DENIED and d.reason == "PARTNER_OF_ANOTHER_REGION"
    await nothing_recorded(tls_stack)


def test_outside_dev_mode_the_gateway_needs_mutual_tls(state: DevState) -> None:
    from gateway.server import Gateway

    cfg = Config.load(state.config_path(SZ))
    cfg.gateway.dev_mode = False
    with pytest.raises(ConfigError, match="client certificates"):
        Gateway(
            ComponentParts(
                cfg,
                registry=None,  # type: ignore[arg-type]
                secrets=None,  # type: ignore[arg-type]
                catalogue=None,  # type: ignore[arg-type]
                ledger=None,  # type: ignore[arg-type]
                tracer=None,  # type: ignore[arg-type]
                metrics=None,  # type: ignore[arg-type]
            )
        )


def test_tls_settings_go_together(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="go together"):
        Config.from_dict({"gateway": {"tls_cert": "a.crt"}}, base_dir=tmp_path, env={})


def test_partner_identity_is_read_from_the_uri_san_only(pki: Pki) -> None:
    assert certs.partner_of(pki.client().cert_pem) == certs.Partner(SZ, "szgov-ywtb")
    server = certs.issue_server(pki.ca, ["127.0.0.1"])
    assert certs.partner_of(server.cert_pem) is None
    assert certs.partner_of(b"not a certificate") is None
