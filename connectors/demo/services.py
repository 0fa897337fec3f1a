"""The dev stack's back ends, declared as a city would declare its own: HTTP services and a database.

:func:`declared_demo` gives the ``[backends]`` and ``[services]`` tables of a dev region's connector
config: seven items answered by the demo REST services (:mod:`connectors.demo.http_service`, its own
process) through the declared HTTP adapter, and the enterprise register read straight from the demo
SQLite database through the declared SQL adapter, read-only. No Python adapter is involved.
"""

from __future__ import annotations

from typing import Any

from connectors.demo.http_service import BACKEND_NAME
from tongban.core.catalogue import Catalogue

__all__ = ["DB_BACKEND_NAME", "declared_demo"]

DB_BACKEND_NAME = "demo_db"

# The register keeps the representative's full name; the answer masks it as tongban.core.identifiers.mask_name
# does for the names the demo holds (no compound surnames among them).
_ENTERPRISE_SQL = """
SELECT status AS registration_status,
       name AS enterprise_name,
       name = $2 AS name_matches,
       enterprise_type,
       substr(legal_representative_name, 1, 1)
           || substr('**********', 1, length(legal_representative_name) - 1) AS legal_representative_masked,
       CASE WHEN $3 = '' THEN NULL ELSE upper($3) = legal_representative_id END
           AS legal_representative_matches,
       registered_capital_wan,
       established_on,
       region AS registered_region,
       authority AS registration_authority,
       business_scope
  FROM mr_enterprise
 WHERE uscc = upper($1)
"""


def _http(
    method: str, path: str, *, query: dict[str, str] | None = None, body: dict[str, str] | None = None
) -> dict[str, Any]:
    service: dict[str, Any] = {"backend": BACKEND_NAME, "method": method, "path": path}
    if query:
        service["query"] = query
    if body:
        service["body"] = body
    return service


def declared_demo(
    http_base_url: str, db: str, catalogue: Catalogue | None = None
) -> dict[str, dict[str, Any]]:
    """``{"backends.<name>": table, "services.<code>": table}`` for a dev connector config whose demo
    REST services listen at ``http_base_url`` and whose demo database is ``db``."""
    cat = catalogue or Catalogue.load()
    services: dict[str, dict[str, Any]] = {
        "SBJFJLCX0001": _http(
            "GET",
            "/rs/v1/persons/{applicant.id}/contributions",
            query={
                "insurance_type": "{fields.insurance_type}",
                "period_start": "{fields.period_start}",
                "period_end": "{fields.period_end}",
            },
        ),
        "YLBXZYJX0001": _http(
            "GET",
            "/rs/v1/persons/{applicant.id}/transfer-check",
            query={"out": "{fields.transfer_out_region}", "in": "{fields.transfer_in_region}"},
        ),
        "YLDYZGRZ0001": _http(
            "GET",
            "/rs/v1/persons/{applicant.id}/qualification",
            query={"year": "{fields.certification_year}"},
        ),
        "YDJYDJBA0001": _http(
            "POST",
            "/yb/v1/filings",
            body={
                "id_no": "applicant.id",
                "insured_region": "fields.insured_region",
                "treatment_region": "fields.treatment_region",
                "filing_category": "fields.filing_category",
                "valid_from": "fields.valid_from",
                "valid_until": "fields.valid_until",
            },
        ),
        "ZFGJJTQ00001": _http(
            "POST",
            "/gjj/v1/withdrawal-checks",
            body={
                "id_no": "applicant.id",
                "reason": "fields.withdrawal_reason",
                "amount_requested": "fields.amount_requested",
            },
        ),
        "WFZJLZM00001": _http(
            "POST",
            "/ga/v1/no-criminal-record-certificates",
            body={"id_no": "applicant.id", "certificate_use": "fields.certificate_use"},
        ),
        "GJJDWKH00001": _http(
            "GET",
            "/gjj/v1/units/{applicant.id}/opening-check",
            query={
                "unit_name": "{fields.unit_name}",
                "deposit_ratio": "{fields.deposit_ratio}",
                "employee_count": "{fields.employee_count}",
            },
        ),
    }
    for code, service in services.items():
        item = cat.get(code)
        assert item is not None, code
        # The REST services wrap answers in {"code": 0, "data": {...}}: each declared field from data.
        service["response"] = {name: f"$.data.{name}" for name in item.response_fields}
    tables: dict[str, dict[str, Any]] = {
        f"backends.{BACKEND_NAME}": {"kind": "http", "base_url": http_base_url, "read_timeout_s": 5.0},
        f"backends.{DB_BACKEND_NAME}": {"kind": "sqlite", "path": db},
        "services.NZQYSLDJ0001": {
            "backend": DB_BACKEND_NAME,
            "sql": " ".join(_ENTERPRISE_SQL.split()),
            "params": ["applicant.id", "fields.enterprise_name", "fields.legal_representative_id"],
            "booleans": ["name_matches", "legal_representative_matches"],
        },
    }
    tables.update({f"services.{code}": service for code, service in services.items()})
    return tables
