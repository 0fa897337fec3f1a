"""How the HTTP adapter proves who calls, checked by the back end itself: a bearer token, an HMAC
signature the back end recomputes from the documented canonical request, mutual TLS; and the back
end's own certificate checked against the configured CA."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from connectors.adapters import AdapterFailure
from tests.connectors.backends.conftest import MakeBackend
from tests.connectors.backends.http_backend import (
    PENSION,
    TRANSFER,
    BackendApp,
    adapter_request,
    json_reply,
    sequence,
    status_reply,
)
from tongban.core.catalogue import Catalogue
from tongban.core.errors import Reason
from tongban.runtime import certs

SECRET = b"0123456789abcdef-shared-with-the-back-end"


async def test_a_bearer_token_from_its_file(
    tmp_path: Path, backends: MakeBackend, catalogue: Catalogue
) -> None:
    (tmp_path / "token").write_text("s3cr3t-t0ken\n")  # the newline is stripped
    (tmp_path / "stale").write_text("an-old-token\n")
    async with BackendApp(bearer="s3cr3t-t0ken", reply=json_reply({"status": "ok"})) as app:
        # A relative path resolves against the config file's directory.
        good = backends(app.base_url, auth="bearer", token_file="token")
        stale = backends(app.base_url, auth="bearer", token_file="stale")
        item = catalogue.items[PENSION]

        assert await good.service(PENSION, {"path": "/p"}, item).call(adapter_request(PENSION)) == {
            "status": "ok"
        }
        with pytest.raises(AdapterFailure) as caught:
            await stale.service(PENSION, {"path": "/p"}, item).call(adapter_request(PENSION))

    assert caught.value.reason is Reason.BACKEND_FAILURE
    assert "credentials (HTTP 401)" in caught.value.message
    assert app.refused == ["bearer token"]
    assert app.calls == 1


async def test_hmac_signatures_are_verified_by_the_back_end(
    tmp_path: Path, backends: MakeBackend, catalogue: Catalogue
) -> None:
    (tmp_path / "hmac.secret").write_bytes(SECRET + b"\n")
    (tmp_path / "wrong.secret").write_bytes(b"not-the-shared-secret-at-all")
    async with BackendApp(hmac_key=("szgov-connector", SECRET), reply=json_reply({"status": "ok"})) as app:
        signed = backends(
            app.base_url, auth="hmac", hmac_key_id="szgov-connector", hmac_secret_file="hmac.secret"
        )
        query = signed.service(
            PENSION,
            {"path": "/persons/{applicant.id}", "query": {"type": "{fields.insurance_type}", "lang": "中文"}},
            catalogue.items[PENSION],
        )
        post = signed.service(
            TRANSFER,
            {"method": "POST", "path": "/transfers", "body": {"out": "fields.transfer_out_region"}},
            catalogue.items[TRANSFER],
        )
        await query.call(adapter_request(PENSION, insurance_type="1 0&x"))
        await post.call(adapter_request(TRANSFER, transfer_out_region="320200"))

        wrong = backends(
            app.base_url, auth="hmac", hmac_key_id="szgov-connector", hmac_secret_file="wrong.secret"
        )
        with pytest.raises(AdapterFailure) as caught:
            await wrong.service(PENSION, {"path": "/p"}, catalogue.items[PENSION]).call(
                adapter_request(PENSION)
            )

    assert [s.method for s in app.seen] == ["GET", "POST"]
    assert app.refused == ["signature"]
    assert "credentials (HTTP 401)" in caught.value.message


async def test_every_attempt_is_signed_afresh(
    tmp_path: Path, backends: MakeBackend, catalogue: Catalogue
) -> None:
    """The back end refuses a nonce it has seen: a retry must not replay the first attempt's."""
    (tmp_path / "hmac.secret").write_bytes(SECRET)
    async with BackendApp(hmac_key=("k1", SECRET)) as app:
        app.reply = sequence(status_reply(503), json_reply({"status": "ok"}))
        backend = backends(app.base_url, auth="hmac", hmac_key_id="k1", hmac_secret_file="hmac.secret")
        service = backend.service(PENSION, {"path": "/p"}, catalogue.items[PENSION])

        assert await service.call(adapter_request(PENSION)) == {"status": "ok"}

    assert app.refused == [] and app.calls == 2
    assert app.seen[0].headers["X-Tongban-Nonce"] != app.seen[1].headers["X-Tongban-Nonce"]


@dataclass
class Tls:
    directory: Path
    ca: certs.Issued

    def server(self, *, require_client_cert: bool) -> ssl.SSLContext:
        key, crt = certs.write(certs.issue_server(self.ca, ["127.0.0.1"]), self.directory, "backend")
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.directory / "ca.crt"))
        ctx.load_cert_chain(crt, key)
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE
        return ctx


@pytest.fixture
async def tls(tmp_path: Path) -> AsyncIterator[Tls]:
    """A test CA (``tls/ca.crt``) and a client certificate it issued (``tls/connector.*``)."""
    ca = certs.create_ca("back-end test CA")
    d = tmp_path / "tls"
    certs.write(ca, d, "ca")
    certs.write(certs.issue_named_client(ca, "connector.wuxi"), d, "connector")
    yield Tls(d, ca)


async def test_mutual_tls_to_the_back_end(tls: Tls, backends: MakeBackend, catalogue: Catalogue) -> None:
    item = catalogue.items[PENSION]
    async with BackendApp(
        tls=tls.server(require_client_cert=True), reply=json_reply({"status": "ok"})
    ) as app:
        assert app.base_url.startswith("https://")
        with_cert = backends(
            app.base_url,
            ca_file="tls/ca.crt",
            client_cert="tls/connector.crt",
            client_key="tls/connector.key",
            http2=True,  # offered by ALPN; this back end speaks HTTP/1.1 only
        )
        without_cert = backends(app.base_url, ca_file="tls/ca.crt", retries=0)

        assert await with_cert.service(PENSION, {"path": "/p"}, item).call(adapter_request(PENSION)) == {
            "status": "ok"
        }
        with pytest.raises(AdapterFailure) as caught:
            await without_cert.service(PENSION, {"path": "/p"}, item).call(adapter_request(PENSION))

    assert caught.value.reason is Reason.BACKEND_FAILURE
    assert app.calls == 1


async def test_a_back_end_certificate_from_another_ca_is_refused(
    tls: Tls, backends: MakeBackend, catalogue: Catalogue
) -> None:
    async with BackendApp(tls=tls.server(require_client_cert=False)) as app:
        # The system's roots (no ca_file) do not include the test CA.
        backend = backends(app.base_url, retries=0)
        with pytest.raises(AdapterFailure) as caught:
            await backend.service(PENSION, {"path": "/p"}, catalogue.items[PENSION]).call(
                adapter_request(PENSION)
            )

    assert caught.value.reason is Reason.BACKEND_FAILURE
    assert "TLS handshake" in caught.value.message
    assert app.calls == 0
