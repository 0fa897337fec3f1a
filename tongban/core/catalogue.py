"""The service catalogue: which 跨省通办 items exist, what their forms hold, and request validation.

The catalogue is data: protobuf JSON of ``tongban.v1.Catalogue``, the one shipped in the package
(``tongban/core/data/catalogue.json``) or a deployment's own file, or a ``SignedCatalogue`` the
registry authority signed (:mod:`tongban.core.catalogue_signing`). :meth:`Catalogue.load` parses it
and checks the catalogue itself, field patterns included (a bad catalogue is a
:class:`~tongban.core.errors.ConfigError` at start-up, never a surprise at request time). A node
follows newer revisions live and keeps a few earlier ones (:meth:`Catalogue.adopt`,
:meth:`Catalogue.at`; docs/catalogue.md).

:func:`validate_request` checks a ``ServiceRequest`` against its item and reports every problem at once
as :class:`~tongban.core.errors.InvalidRequest` violations whose paths are relative to ``QueryRequest`` (the
form gRPC ``BadRequest.FieldViolation`` wants). Descriptions never contain the offending value: most
values here are personal data.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import NoReturn

from google.protobuf import json_format

from tongban.core import field_patterns, identifiers
from tongban.core.errors import ConfigError, InvalidRequest, PermissionDenied, Reason, Violation
from tongban.core.text import unsafe_character
from tongban.v1 import catalogue_pb2, exchange_pb2

__all__ = [
    "DEFAULT_MAX_FIELD_LENGTH",
    "Catalogue",
    "CatalogueItem",
    "response_projection",
    "validate_request",
]

CatalogueItem = catalogue_pb2.CatalogueItem
"""The proto message of one item (re-exported so callers need not import the generated module)."""

#: Length limit of a form value whose FieldSpec sets no ``max_length``.
DEFAULT_MAX_FIELD_LENGTH = 256

_ITEM_CODE = re.compile(r"[0-9A-Z]{10,36}")
_FIELD_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
_PURPOSE_CODE = re.compile(r"[A-Z][A-Z0-9_]{2,63}")
_REFERENCE = re.compile(r"[0-9A-Za-z\u4e00-\u9fff][0-9A-Za-z\u4e00-\u9fff_./:()〔〕\-]{3,127}")
"""A consent, approval or legal reference: 4–128 letters, digits, CJK and ``_./:()〔〕-``, e.g.
``SZ-CONSENT-2026-000123`` or ``深政数审〔2026〕12号``."""
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_INTEGER = re.compile(r"-?[0-9]+")
_REGION6 = re.compile(r"[0-9]{6}")
_MAX_NAME_LENGTH = 64
_MAX_TEXT_LENGTH = 512
"""Free text in the governance block (申请事由, department names): bounded like form values."""
# Unknown form fields and declared fields are caller-controlled lists: past this many, the rest are
# summarised in one violation so a hostile request cannot blow up the error trailer.
_MAX_LISTED = 16
# An enum's allowed values are listed in the description only when the list is short.
_MAX_ENUM_LISTED = 10

_TYPED = frozenset(catalogue_pb2.FieldType.values()) - {catalogue_pb2.FIELD_TYPE_UNSPECIFIED}
_IDENTIFIER_TYPES = frozenset(
    {
        catalogue_pb2.FIELD_TYPE_CITIZEN_ID,
        catalogue_pb2.FIELD_TYPE_USCC,
        catalogue_pb2.FIELD_TYPE_REGION_CODE,
        catalogue_pb2.FIELD_TYPE_PHONE,
    }
)

_KIND_WORD = {
    exchange_pb2.APPLICANT_KIND_PERSON: "person",
    exchange_pb2.APPLICANT_KIND_ENTERPRISE: "enterprise",
}


@dataclass(eq=False)
class Catalogue:
    """The items a deployment knows, by code, at one revision; and, for the live catalogue a node
    follows, the earlier revisions it still holds.

    Build it with :meth:`load` or :meth:`from_proto`, which check the catalogue; the constructor trusts
    its arguments. The item messages are shared: treat them as read-only. Like the trust registry, the
    live catalogue changes in place (:meth:`adopt`), so every holder of the object sees the newer
    revision at once; the revision it held is kept (:meth:`at`), up to ``keep_revisions`` in all, for
    requests another region validated against it.

    Attributes:
        items: catalogue items by item code, in catalogue order.
        version: catalogue version label, e.g. ``"2026.12"``.
        revision: monotonic revision (0: a catalogue from before revisions).
        issued_at_s: when the registry authority issued it (epoch seconds; 0: not said).
        signed: the SignedCatalogue bytes it was verified from (empty: read from a JSON file).
        keep_revisions: how many revisions :meth:`adopt` keeps, this one included.
    """

    items: Mapping[str, CatalogueItem] = field(default_factory=dict)
    version: str = ""
    revision: int = 0
    issued_at_s: float = 0.0
    signed: bytes = b""
    keep_revisions: int = 8
    _earlier: dict[int, Catalogue] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.items = MappingProxyType(dict(self.items))

    def get(self, code: str) -> CatalogueItem | None:
        """Return the item with this code, or None when the catalogue has no such item."""
        return self.items.get(code)

    def codes(self) -> tuple[str, ...]:
        """Return all item codes in catalogue order."""
        return tuple(self.items)

    def __contains__(self, code: object) -> bool:
        return code in self.items

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[CatalogueItem]:
        return iter(self.items.values())

    def to_proto(self) -> catalogue_pb2.Catalogue:
        """Return the catalogue as a fresh ``tongban.v1.Catalogue`` message."""
        msg = catalogue_pb2.Catalogue(version=self.version, revision=self.revision)
        if self.issued_at_s:
            msg.issued_at.FromNanoseconds(round(self.issued_at_s * 1e9))
        msg.items.extend(self.items.values())
        return msg

    # -- revisions ----------------------------------------------------------------------------

    def at(self, revision: int) -> Catalogue | None:
        """The catalogue of ``revision`` if held: this one for its own revision and for 0 (a sender
        from before revisions), an earlier one kept by :meth:`adopt` or :meth:`remember`; else None."""
        if revision in (0, self.revision):
            return self
        return self._earlier.get(revision)

    def revisions(self) -> tuple[int, ...]:
        """The revisions held, oldest first (this one last)."""
        return (*sorted(self._earlier), self.revision)

    def adopt(self, newer: Catalogue) -> None:
        """Take over ``newer``'s contents in place, keeping what this held as an earlier revision.

        One synchronous step: on the event loop no validation can observe half of the change.
        """
        held = self.snapshot()
        self.items, self.version, self.revision = newer.items, newer.version, newer.revision
        self.issued_at_s, self.signed = newer.issued_at_s, newer.signed
        for revision in [r for r in self._earlier if r >= self.revision]:
            del self._earlier[revision]
        self.remember(held)

    def remember(self, earlier: Catalogue) -> None:
        """Keep ``earlier`` (a verified catalogue older than this one) among the held revisions."""
        if 0 < earlier.revision < self.revision and earlier.revision not in self._earlier:
            self._earlier[earlier.revision] = earlier.snapshot()
            self._trim()

    def snapshot(self) -> Catalogue:
        """This revision alone, as a catalogue that holds no other."""
        return Catalogue(self.items, self.version, self.revision, self.issued_at_s, self.signed, 1)

    def _trim(self) -> None:
        while len(self._earlier) >= max(1, self.keep_revisions):
            del self._earlier[min(self._earlier)]

    # -- loading ------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path | None = None) -> Catalogue:
        """Load and check a catalogue file.

        Args:
            path: a protobuf JSON file of ``tongban.v1.Catalogue``; None loads the catalogue embedded in
                the package (``tongban/core/data/catalogue.json``).

        Returns:
            The checked catalogue.

        Raises:
            ConfigError: the file cannot be read or parsed, or the catalogue is inconsistent.
        """
        try:
            if path is None:
                text = (Path(__file__).parent / "data" / "catalogue.json").read_text(encoding="utf-8")
                source = "embedded catalogue"
            else:
                text = Path(path).read_text(encoding="utf-8")
                source = f"catalogue file {path}"
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the catalogue: {exc}") from exc
        msg = catalogue_pb2.Catalogue()
        try:
            json_format.Parse(text, msg)
        except json_format.ParseError as exc:
            raise ConfigError(f"{source} is not a valid tongban.v1.Catalogue: {exc}") from exc
        return cls.from_proto(msg)

    @classmethod
    def from_proto(cls, msg: catalogue_pb2.Catalogue, *, signed: bytes = b"") -> Catalogue:
        """Check a ``tongban.v1.Catalogue`` message and wrap (a copy of) its items.

        Args:
            msg: the catalogue.
            signed: the SignedCatalogue bytes ``msg`` was verified from, if any.

        Raises:
            ConfigError: naming the first bad item: a code not matching ``[0-9A-Z]{10,36}`` or used
                twice, no applicant kind, a field without a well-formed unique name or without a type,
                an ENUM field without allowed values, a bad pattern or length bounds, or no response
                fields.
        """
        items: dict[str, CatalogueItem] = {}
        for index, item in enumerate(msg.items):
            _check_item(index, item)
            if item.code in items:
                raise ConfigError(f"catalogue item {item.code}: the code is used twice")
            copy = CatalogueItem()
            copy.CopyFrom(item)
            items[item.code] = copy
        issued = msg.issued_at.ToNanoseconds() / 1e9 if msg.HasField("issued_at") else 0.0
        return cls(items=items, version=msg.version, revision=msg.revision, issued_at_s=issued, signed=signed)


def _check_item(index: int, item: CatalogueItem) -> None:
    if not _ITEM_CODE.fullmatch(item.code):
        shown = repr(item.code[:40])
        raise ConfigError(f"catalogue item #{index} ({shown}): the code must match [0-9A-Z]{{10,36}}")

    def bad(problem: str) -> ConfigError:
        return ConfigError(f"catalogue item {item.code}: {problem}")

    if item.applicant_kind not in _KIND_WORD:
        raise bad("applicant_kind must be PERSON or ENTERPRISE")
    seen: set[str] = set()
    for spec in item.fields:
        if not _FIELD_NAME.fullmatch(spec.name):
            raise bad(f"field name {spec.name[:64]!r} must match [a-z][a-z0-9_]{{0,63}}")
        if spec.name in seen:
            raise bad(f"field {spec.name} is declared twice")
        seen.add(spec.name)
        if spec.type not in _TYPED:
            raise bad(f"field {spec.name} has no type")
        if spec.type == catalogue_pb2.FIELD_TYPE_ENUM and not spec.allowed_values:
            raise bad(f"ENUM field {spec.name} has no allowed values")
        if spec.max_length and spec.min_length > spec.max_length:
            raise bad(f"field {spec.name}: min_length is above max_length")
        if spec.pattern:
            try:
                field_patterns.compiled(spec.pattern)
            except ConfigError as exc:
                raise bad(f"field {spec.name}: {exc.message}") from None
    if not item.response_fields:
        raise bad("response_fields is empty")
    offered = set(item.response_fields)
    if any(spec.name not in offered for spec in item.response_specs):
        raise bad("response_specs names a field that is not in response_fields")
    d = item.delivery
    if any(b.ToTimedelta().total_seconds() <= 0 for b in d.backoff):
        raise bad("delivery.backoff delays must be positive")
    if d.time_to_live.ToTimedelta().total_seconds() < 0:
        raise bad("delivery.time_to_live must not be negative")


# --------------------------------------------------------------------------- request validation


def validate_request(
    catalogue: Catalogue,
    request: exchange_pb2.ServiceRequest,
    *,
    max_field_length: int = DEFAULT_MAX_FIELD_LENGTH,
    today: datetime.date | None = None,
    uscc_strict: bool = True,
) -> CatalogueItem:
    """Check a service request against the catalogue and return its item.

    Every problem is collected before raising, so the caller sees all of them at once. An unknown or
    missing service code is the exception: nothing else can be checked without the item. Whether the
    target region exists in the trust registry is not checked here (the registry does that).

    Args:
        catalogue: the catalogue to check against.
        request: the request.
        max_field_length: length limit (characters) of a form value whose FieldSpec sets none.
        today: reference date for "birth date in the future" in citizen IDs; defaults to today.
        uscc_strict: whether a unified social credit code must have a correct check character (some
            real historical codes do not; see docs/domain.md).

    Returns:
        The catalogue item of ``request.service_code``.

    Raises:
        InvalidRequest: with one :class:`~tongban.core.errors.Violation` per problem; paths are relative to
            ``QueryRequest`` (``request.fields[<name>]``, ``request.governance.purpose_code``, ...).
    """
    code = request.service_code
    if not code:
        _reject([Violation("request.service_code", "Service code is required.")])
    item = catalogue.get(code)
    if item is None:
        _reject([Violation("request.service_code", "Service code is not in the catalogue.")])
    if item.share_attribute == exchange_pb2.SHARE_ATTRIBUTE_NOT_SHARED:
        # Not a form problem the caller can fix: the data of this item is never shared.
        raise PermissionDenied(
            f"the data of service {code} is 不予共享 (not shared across regions)",
            reason=Reason.DATA_NOT_SHARED,
        )

    violations: list[Violation] = []
    violations += _check_target_region(request.target_region)
    violations += _check_applicant(item, request.applicant, today=today, uscc_strict=uscc_strict)
    violations += _check_fields(
        item, request.fields, max_field_length=max_field_length, today=today, uscc_strict=uscc_strict
    )
    violations += _check_governance(item, request.governance)
    if violations:
        _reject(violations)
    return item


def response_projection(item: CatalogueItem, declared_fields: Iterable[str]) -> tuple[str, ...]:
    """Return the response fields the provider may return for a request.

    Args:
        item: the catalogue item.
        declared_fields: the requester's ``governance.declared_fields`` (minimum necessary).

    Returns:
        The declared fields the item offers, in catalogue order; all of the item's response fields when
        nothing is declared.
    """
    declared = set(declared_fields)
    if not declared:
        return tuple(item.response_fields)
    return tuple(name for name in item.response_fields if name in declared)


def _reject(violations: list[Violation]) -> NoReturn:
    count = len(violations)
    noun = "violation" if count == 1 else "violations"
    raise InvalidRequest(f"the request breaks the catalogue ({count} {noun})", violations=violations)


def _check_target_region(value: str) -> list[Violation]:
    path = "request.target_region"
    if not value:
        return [Violation(path, "Target region is required.")]
    if not _REGION6.fullmatch(value):
        return [Violation(path, "Target region must be a 6-digit GB/T 2260 region code.")]
    try:
        identifiers.check_region_code(value)
    except identifiers.InvalidIdentifier as exc:
        return [Violation(path, f"Not a valid region code: {exc.reason}.")]
    return []


def _check_applicant(
    item: CatalogueItem,
    applicant: exchange_pb2.Applicant,
    *,
    today: datetime.date | None,
    uscc_strict: bool,
) -> list[Violation]:
    out: list[Violation] = []
    wanted = item.applicant_kind
    if applicant.kind == exchange_pb2.APPLICANT_KIND_UNSPECIFIED:
        out.append(Violation("request.applicant.kind", "Applicant kind is required."))
    elif applicant.kind != wanted:
        word = _KIND_WORD.get(wanted, "another kind of")
        out.append(Violation("request.applicant.kind", f"This service is for {word} applicants."))
    # The identifier must be of the kind the item serves, whatever kind the caller claimed: a wrong
    # claim is one violation (on kind), not two.
    if not applicant.id_no:
        out.append(Violation("request.applicant.id_no", "Applicant identifier is required."))
    else:
        field_type = (
            catalogue_pb2.FIELD_TYPE_CITIZEN_ID
            if wanted == exchange_pb2.APPLICANT_KIND_PERSON
            else catalogue_pb2.FIELD_TYPE_USCC
        )
        problem = _identifier_problem(field_type, applicant.id_no, today=today, uscc_strict=uscc_strict)
        if problem:
            out.append(Violation("request.applicant.id_no", problem))
    if applicant.phone:
        problem = _identifier_problem(catalogue_pb2.FIELD_TYPE_PHONE, applicant.phone)
        if problem:
            out.append(Violation("request.applicant.phone", problem))
    if len(applicant.name) > _MAX_NAME_LENGTH:
        out.append(Violation("request.applicant.name", f"Name is longer than {_MAX_NAME_LENGTH} characters."))
    elif problem := unsafe_character(applicant.name, identity=True):
        out.append(Violation("request.applicant.name", problem))
    return out


def _identifier_problem(
    field_type: int, value: str, *, today: datetime.date | None = None, uscc_strict: bool = True
) -> str | None:
    """Run the identifier validator of ``field_type``; describe the problem (never the value) or None."""
    check: Callable[[str], str]
    if field_type == catalogue_pb2.FIELD_TYPE_CITIZEN_ID:
        check, what = (lambda v: identifiers.check_citizen_id(v, today=today)), "citizen ID number"
    elif field_type == catalogue_pb2.FIELD_TYPE_USCC:
        check, what = (lambda v: identifiers.check_uscc(v, strict=uscc_strict)), "unified social credit code"
    elif field_type == catalogue_pb2.FIELD_TYPE_PHONE:
        check, what = identifiers.check_phone, "mobile number"
    else:
        check, what = identifiers.check_region_code, "region code"
    try:
        check(value)
    except identifiers.InvalidIdentifier as exc:
        return f"Not a valid {what}: {exc.reason}."
    return None


def _check_fields(
    item: CatalogueItem,
    fields: Mapping[str, str],
    *,
    max_field_length: int,
    today: datetime.date | None,
    uscc_strict: bool,
) -> list[Violation]:
    out: list[Violation] = []
    declared = {spec.name for spec in item.fields}
    for spec in item.fields:
        path = f"request.fields[{spec.name}]"
        value = fields.get(spec.name)
        if value is None or not value.strip():
            if spec.required:
                out.append(Violation(path, "This field is required."))
            continue
        # Length first: validators and patterns never see (nor spend time on) an oversized value.
        limit = spec.max_length or max_field_length
        if len(value) > limit:
            out.append(Violation(path, f"Value is longer than {limit} characters."))
            continue
        if len(value) < spec.min_length:
            out.append(Violation(path, f"Value is shorter than {spec.min_length} characters."))
            continue
        problem = _value_problem(spec, value, today=today, uscc_strict=uscc_strict)
        if not problem and spec.pattern and not field_patterns.compiled(spec.pattern).fullmatch(value):
            problem = f"Must match the pattern {spec.pattern}."
        if problem:
            out.append(Violation(path, problem))

    unknown = sorted(name for name in fields if name not in declared)
    listed = [name for name in unknown if _FIELD_NAME.fullmatch(name)][:_MAX_LISTED]
    for name in listed:
        out.append(Violation(f"request.fields[{name}]", "This field is not declared by the service."))
    rest = len(unknown) - len(listed)
    if rest:
        out.append(Violation("request.fields", f"{rest} more fields are not declared by the service."))
    return out


def _value_problem(
    spec: catalogue_pb2.FieldSpec, value: str, *, today: datetime.date | None, uscc_strict: bool
) -> str | None:
    t = spec.type
    if t == catalogue_pb2.FIELD_TYPE_STRING:
        return unsafe_character(value)
    if t in _IDENTIFIER_TYPES:
        return _identifier_problem(t, value, today=today, uscc_strict=uscc_strict)
    if t == catalogue_pb2.FIELD_TYPE_DATE:
        if not _DATE.fullmatch(value):
            return "Must be a date in YYYY-MM-DD form."
        try:
            datetime.date.fromisoformat(value)
        except ValueError:
            return "Not a real calendar date."
        return None
    if t == catalogue_pb2.FIELD_TYPE_INTEGER:
        return None if _INTEGER.fullmatch(value) else "Must be a decimal integer."
    if t == catalogue_pb2.FIELD_TYPE_ENUM:
        if value in spec.allowed_values:
            return None
        if len(spec.allowed_values) <= _MAX_ENUM_LISTED:
            return f"Must be one of: {', '.join(spec.allowed_values)}."
        return "Not one of the allowed values."
    # Catalogue.from_proto refuses untyped fields; a hand-built catalogue might not.
    return "The catalogue declares no type for this field."


def _check_reference(value: str, path: str, missing: str) -> list[Violation]:
    if not value.strip():
        return [Violation(path, missing)]
    if not _REFERENCE.fullmatch(value):
        return [
            Violation(
                path,
                "Must be 4 to 128 characters: letters, digits, Chinese characters and _ . / : ( ) 〔 〕 -.",
            )
        ]
    return []


def _check_texts(governance: exchange_pb2.Governance) -> list[Violation]:
    """The governance block's free and identity texts, by the rule of :mod:`tongban.core.text` (the
    references have their own stricter pattern)."""
    r = governance.requester
    texts = (
        ("request.governance.purpose_text", governance.purpose_text, False),
        ("request.governance.data_grade", governance.data_grade, True),
        ("request.governance.requester.org_uscc", r.org_uscc, True),
        ("request.governance.requester.department", r.department, True),
        ("request.governance.requester.operator_digest", r.operator_digest, True),
    )
    out = []
    for path, value, identity in texts:
        if len(value) > _MAX_TEXT_LENGTH:
            out.append(Violation(path, f"Longer than {_MAX_TEXT_LENGTH} characters."))
        elif problem := unsafe_character(value, identity=identity):
            out.append(Violation(path, problem))
    return out


def _check_governance(item: CatalogueItem, governance: exchange_pb2.Governance) -> list[Violation]:
    out: list[Violation] = []
    if not governance.purpose_code:
        out.append(Violation("request.governance.purpose_code", "Purpose code is required."))
    elif not _PURPOSE_CODE.fullmatch(governance.purpose_code):
        out.append(
            Violation(
                "request.governance.purpose_code",
                "Purpose code must be 3 to 64 characters: an uppercase letter, then uppercase letters, "
                "digits or underscores.",
            )
        )
    consent = governance.legal_basis == exchange_pb2.LEGAL_BASIS_CONSENT
    if consent:
        out += _check_reference(
            governance.consent_reference,
            "request.governance.consent_reference",
            "Consent reference is required when the legal basis is consent.",
        )
    if item.share_attribute == exchange_pb2.SHARE_ATTRIBUTE_CONDITIONAL:
        out += _check_reference(
            governance.approval_reference,
            "request.governance.approval_reference",
            "Approval reference is required: this service's data is shared on conditions (有条件共享).",
        )
    if item.sensitive:
        # Sensitive personal data (PIPL Art. 28-29): the basis must be stated, and named.
        if governance.legal_basis == exchange_pb2.LEGAL_BASIS_UNSPECIFIED:
            out.append(
                Violation(
                    "request.governance.legal_basis",
                    "This service returns sensitive personal data: state the legal basis.",
                )
            )
        elif not consent:
            out += _check_reference(
                governance.legal_reference,
                "request.governance.legal_reference",
                "This service returns sensitive personal data: name the statute relied on.",
            )
        if not governance.sensitive:
            out.append(
                Violation(
                    "request.governance.sensitive",
                    "This service returns sensitive personal data: the request must say so.",
                )
            )
    out += _check_texts(governance)
    offered = set(item.response_fields)
    bad = [i for i, name in enumerate(governance.declared_fields) if name not in offered]
    for i in bad[:_MAX_LISTED]:
        out.append(
            Violation(
                "request.governance.declared_fields",
                f"Entry {i} is not a response field of this service.",
            )
        )
    if len(bad) > _MAX_LISTED:
        out.append(
            Violation(
                "request.governance.declared_fields",
                f"{len(bad) - _MAX_LISTED} more entries are not response fields of this service.",
            )
        )
    return out
