"""What a declarative adapter takes from a request and gives back: value sources, templates, JSON paths.

Every value an adapter sends to a back end comes from a *source* named in the config:

=====================  ==========================================================
``applicant.id``       the applicant's ID number or USCC (validated by the catalogue)
``applicant.name``     the applicant's name
``applicant.kind``     ``person`` or ``enterprise``
``applicant.phone``    the applicant's mobile phone (empty when not given)
``fields.<name>``      a validated form field (empty when the request left it out)
``message_id``         the exchange's message id (the back end's idempotency key)
``case_no``            the case number of a Submit (empty for a Query)
``requester_region``   GB/T 2260 code of the region that asked
``service_code``       the catalogue item code
``origin_system``      the partner system that asked, in the requesting region
``purpose``            the request's purpose code
=====================  ==========================================================

A *template* is text with ``{source}`` placeholders (``/persons/{applicant.id}/pension``); each value
is passed through an encoder (URL-encoding for URLs) so a value can never add a path segment, a query
parameter or a header line. A placeholder that names no source is a :class:`ConfigError` at start-up.

A response mapping names, per declared response field, a JSON path into the back end's answer
(jsonpath-ng syntax, e.g. ``$.data.records[0].status``); paths are compiled at start-up.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from jsonpath_ng import JSONPath
from jsonpath_ng import parse as parse_json_path
from jsonpath_ng.exceptions import JsonPathLexerError, JsonPathParserError

from connectors.adapters import AdapterRequest
from tongban.core.errors import ConfigError

__all__ = ["ResponseMap", "Source", "Template"]

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_FIELD = re.compile(r"[a-z][a-z0-9_]{0,63}")

_SIMPLE: dict[str, Callable[[AdapterRequest], str]] = {
    "applicant.id": lambda r: r.applicant_id,
    "applicant.name": lambda r: r.applicant_name,
    "applicant.kind": lambda r: r.applicant_kind,
    "applicant.phone": lambda r: r.applicant_phone,
    "message_id": lambda r: r.message_id,
    "case_no": lambda r: r.case_no,
    "requester_region": lambda r: r.requester_region,
    "service_code": lambda r: r.service_code,
    "origin_system": lambda r: r.origin_system,
    "purpose": lambda r: r.purpose,
}


@dataclass(frozen=True)
class Source:
    """One named value of a request (see the module docstring for the names)."""

    name: str

    @classmethod
    def parse(cls, name: str, *, where: str) -> Source:
        """The source ``name``; ``where`` says which setting named it (for the error).

        Raises:
            ConfigError: no such source.
        """
        if not isinstance(name, str):
            raise ConfigError(f"{where}: a source is a string such as 'fields.year'")
        if name in _SIMPLE:
            return cls(name)
        prefix, _, field_name = name.partition(".")
        if prefix == "fields" and _FIELD.fullmatch(field_name):
            return cls(name)
        raise ConfigError(
            f"{where}: unknown source {name!r} (applicant.id, applicant.name, applicant.kind, "
            f"applicant.phone, fields.<name>, message_id, case_no, requester_region, service_code, "
            f"origin_system, purpose)"
        )

    def of(self, request: AdapterRequest) -> str:
        """This source's value in ``request``."""
        simple = _SIMPLE.get(self.name)
        if simple is not None:
            return simple(request)
        return request.fields.get(self.name[len("fields.") :], "")


@dataclass(frozen=True)
class Template:
    """Text with ``{source}`` placeholders, checked at start-up and filled per request."""

    parts: tuple[str | Source, ...]

    @classmethod
    def parse(cls, text: str, *, where: str) -> Template:
        """Compile ``text``.

        Raises:
            ConfigError: a placeholder names no source, or braces do not pair.
        """
        if not isinstance(text, str):
            raise ConfigError(f"{where}: must be a string")
        parts: list[str | Source] = []
        at = 0
        for m in _PLACEHOLDER.finditer(text):
            parts.append(text[at : m.start()])
            parts.append(Source.parse(m.group(1), where=where))
            at = m.end()
        parts.append(text[at:])
        literal = "".join(p for p in parts if isinstance(p, str))
        if "{" in literal or "}" in literal:
            raise ConfigError(f"{where}: unpaired brace in {text!r}")
        return cls(tuple(p for p in parts if p != ""))

    @property
    def sources(self) -> tuple[Source, ...]:
        return tuple(p for p in self.parts if isinstance(p, Source))

    def fill(self, request: AdapterRequest, encode: Callable[[str], str] = lambda v: v) -> str:
        """The text with every placeholder replaced by ``encode(value)``."""
        return "".join(p if isinstance(p, str) else encode(p.of(request)) for p in self.parts)


@dataclass(frozen=True)
class ResponseMap:
    """Declared response field → JSON path into the back end's answer."""

    paths: Mapping[str, JSONPath]

    @classmethod
    def parse(cls, table: Any, *, where: str) -> ResponseMap:
        """Compile ``{field: "$.json.path"}``.

        Raises:
            ConfigError: not a table of strings, a bad field name or a path that does not parse.
        """
        if not isinstance(table, Mapping):
            raise ConfigError(f'{where}: must be a table of field = "$.json.path"')
        paths: dict[str, JSONPath] = {}
        for name, path in table.items():
            if not _FIELD.fullmatch(str(name)) or not isinstance(path, str):
                raise ConfigError(f"{where}: {name!r} must be a field name mapped to a JSON path string")
            try:
                paths[name] = parse_json_path(path)
            except (JsonPathLexerError, JsonPathParserError, ValueError, TypeError, AttributeError) as exc:
                raise ConfigError(f"{where}.{name}: {path!r} is not a JSON path") from exc
        return cls(paths)

    def apply(self, document: Any) -> dict[str, Any]:
        """The mapped fields of ``document``: one match gives its value, several a list, none omits
        the field."""
        out: dict[str, Any] = {}
        for name, path in self.paths.items():
            found = [m.value for m in path.find(document)]
            if len(found) == 1:
                out[name] = found[0]
            elif found:
                out[name] = found
        return out
