"""An HTTP back end's and its services' settings are checked at start-up: every mistake is a
ConfigError naming the setting (never a surprise at request time, never a secret's content)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from connectors.backends.http import HttpBackend
from connectors.backends.signing import BearerToken, HmacSigner
from tests.connectors.backends.http_backend import PENSION, TRANSFER
from tongban.core.catalogue import Catalogue
from tongban.core.errors import ConfigError
from tongban.runtime.config import Config

BASE = {"kind": "http", "base_url": "https://shebao.wuxi.example/api"}


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "token").write_text("t0ken\n")
    (tmp_path / "empty").write_text(" \n")
    (tmp_path / "short.secret").write_text("too-short")
    (tmp_path / "hmac.secret").write_text("a-secret-of-enough-length")
    (tmp_path / "not-a-cert.pem").write_text("-----BEGIN CERTIFICATE-----\nnope\n")
    return tmp_path


@pytest.mark.parametrize(
    ("table", "says"),
    [
        ({"kind": "sql", "base_url": "http://x"}, "kind must be"),
        ({"kind": "http"}, "base_url is required"),
        ({**BASE, "timeout": 3}, "unknown setting 'timeout'"),
        ({**BASE, "base_url": "ftp://x/"}, "base_url"),
        ({**BASE, "base_url": "https:///nohost"}, "base_url"),
        ({**BASE, "base_url": "https://x/api?key=1"}, "no query"),
        ({**BASE, "base_url": "https://user:pw@x/api"}, "user info"),
        ({**BASE, "base_url": "http://x", "http2": True}, "need an https base_url"),
        ({**BASE, "base_url": "http://x", "ca_file": "ca.crt"}, "need an https base_url"),
        ({**BASE, "client_cert": "c.crt"}, "go together"),
        ({**BASE, "auth": "basic"}, "auth"),
        ({**BASE, "auth": "bearer"}, "token_file"),
        ({**BASE, "token_file": "token"}, "token_file"),
        ({**BASE, "auth": "hmac", "hmac_key_id": "k1"}, "hmac_secret_file"),
        ({**BASE, "hmac_key_id": "k1", "hmac_secret_file": "hmac.secret"}, "exactly when"),
        ({**BASE, "auth": "hmac", "hmac_key_id": "k 1", "hmac_secret_file": "hmac.secret"}, "hmac_key_id"),
        ({**BASE, "retries": -1}, ">= 0"),
        ({**BASE, "retries": True}, "retries: must be int"),
        ({**BASE, "retries": 1.5}, "retries: must be int"),
        ({**BASE, "read_timeout_s": "10"}, "read_timeout_s: must be float"),
        ({**BASE, "connect_timeout_s": 0}, "> 0"),
        ({**BASE, "max_concurrency": 0}, ">= 1"),
        ({**BASE, "max_response_bytes": 0}, ">= 1"),
        ({**BASE, "auth": "bearer", "token_file": "missing"}, "cannot read"),
        ({**BASE, "auth": "bearer", "token_file": "empty"}, "is empty"),
        ({**BASE, "auth": "hmac", "hmac_key_id": "k1", "hmac_secret_file": "short.secret"}, "at least 16"),
        ({**BASE, "ca_file": "missing.crt"}, "ca_file"),
        ({**BASE, "client_cert": "not-a-cert.pem", "client_key": "not-a-cert.pem"}, "client_cert"),
    ],
)
def test_a_bad_back_end_setting_is_a_config_error(files: Path, table: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigError, match=says.replace("(", r"\(")) as caught:
        HttpBackend.from_table("shebao", table, Config(base_dir=files))
    assert "[backends.shebao]" in caught.value.message
    assert "t0ken" not in caught.value.message and "a-secret" not in caught.value.message


async def test_a_good_back_end_loads_with_its_defaults(files: Path) -> None:
    backend = HttpBackend.from_table(
        "shebao",
        {**BASE, "auth": "hmac", "hmac_key_id": "szgov.connector-1", "hmac_secret_file": "hmac.secret"},
        Config(base_dir=files),
    )
    try:
        s = backend.settings
        assert (s.retries, s.max_concurrency, s.max_response_bytes, s.breaker_failures) == (2, 16, 1 << 20, 5)
        assert "a-secret" not in repr(backend.settings)
    finally:
        await backend.aclose()


def test_credentials_stay_out_of_reprs() -> None:
    assert "s3cr3t" not in repr(HmacSigner("k1", b"s3cr3t-s3cr3t-s3cr3t")) + repr(BearerToken("s3cr3t"))


GOOD: dict[str, Any] = {"path": "/transfers/{fields.transfer_out_region}"}


@pytest.mark.parametrize(
    ("table", "says"),
    [
        ({**GOOD, "url": "/x"}, "unknown setting 'url'"),
        ({**GOOD, "method": "DELETE"}, "method"),
        ({}, "path is required"),
        ({"path": "transfers"}, "starts with /"),
        ({"path": "/transfers?id={applicant.id}"}, "no \\? or #"),
        ({"path": "/persons/{applicant.idno}"}, "unknown source 'applicant.idno'"),
        ({"path": "/persons/{applicant.id"}, "unpaired brace"),
        ({"path": 42}, "must be a string"),
        ({"path": "/x/{fields.no_such_field}"}, "not a form field"),
        ({"path": "/x/{fields.new_employer_name}"}, "optional in the form"),
        ({**GOOD, "query": {"q": "{fields.nope}"}}, "not a form field"),
        ({**GOOD, "query": "q={applicant.id}"}, "a table of"),
        ({**GOOD, "headers": {"X-Id": "{applicant.id}"}}, "personal data"),
        ({**GOOD, "headers": {"X-Name": "{applicant.name}"}}, "personal data"),
        ({**GOOD, "headers": {"Authorization": "Basic x"}}, "not a header a service may set"),
        ({**GOOD, "headers": {"Host": "evil"}}, "not a header a service may set"),
        ({**GOOD, "headers": {"Bad Name": "x"}}, "not a header a service may set"),
        ({**GOOD, "body": {"id": "applicant.id"}}, "a GET has no body"),
        ({**GOOD, "method": "POST", "body": {"id": "{applicant.id}"}}, "unknown source"),
        ({**GOOD, "method": "POST", "body": {"id": "fields.nope"}}, "not a form field"),
        ({**GOOD, "method": "POST", "body": ["applicant.id"]}, "a table of"),
        ({**GOOD, "response": {"pension_status": "$.[["}}, "not a JSON path"),
        ({**GOOD, "response": {"bank_account": "$.account"}}, "not a response field of YLBXZYJX0001"),
        ({**GOOD, "response": "$.data"}, "must be a table"),
        ({**GOOD, "idempotent": "yes"}, "idempotent"),
    ],
)
async def test_a_bad_service_setting_is_a_config_error(
    cfg: Config, catalogue: Catalogue, table: dict[str, Any], says: str
) -> None:
    backend = HttpBackend.from_table("shebao", BASE, cfg)
    try:
        with pytest.raises(ConfigError, match=says) as caught:
            backend.service(TRANSFER, table, catalogue.items[TRANSFER])
        assert "[services.YLBXZYJX0001]" in caught.value.message
    finally:
        await backend.aclose()


async def test_idempotent_follows_the_method_unless_set(cfg: Config, catalogue: Catalogue) -> None:
    backend = HttpBackend.from_table("shebao", BASE, cfg)
    item = catalogue.items[PENSION]
    try:
        assert backend.service(PENSION, {"path": "/p"}, item).settings.idempotent
        assert backend.service(PENSION, {"path": "/p", "method": "put"}, item).settings.idempotent
        assert not backend.service(PENSION, {"path": "/p", "method": "POST"}, item).settings.idempotent
        post = {"path": "/p", "method": "POST", "idempotent": True}
        assert backend.service(PENSION, post, item).settings.idempotent
    finally:
        await backend.aclose()
