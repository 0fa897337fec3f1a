"""What a ledger entry's ``detail`` says, as typed fields.

The ledger stores ``detail`` as text and hashes it (ledger/entry.py, encoding version 1); it knows
nothing of what the text means. Entries written since the restructuring carry a :class:`Detail`
encoded as a small canonical JSON object (keys sorted, no whitespace, empty fields left out);
entries written before it carry the older notes (``"case=C reason=R"``, ``"REMOTE: R"``, …).
:meth:`Detail.decode` reads both, so a ledger written by any release verifies and reads the same;
:meth:`Detail.render` prints a detail the way the older notes looked, for operators.

A detail holds ids, codes and counts only, never personal data, never caller text: writers put in
reason codes from :class:`~tongban.core.errors.Reason` (or another region's reason, checked to be
UPPER_SNAKE), catalogue field paths already checked to be safe, case numbers and message ids.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, Final


class Source(StrEnum):
    """Whose check the ``outcome`` of a failure comes from, when it is not this region's own."""

    REMOTE = "REMOTE"
    """The other region's signed refusal."""
    REPLY_INVALID = "REPLY_INVALID"
    """The other region's answer failed this region's check (the outcome names the check)."""
    POISON = "POISON"
    """A message in the inbound stream that could never be processed."""
    EVENT = "EVENT"
    """A case event envelope that failed this region's check."""


OK: Final = "OK"
"""The outcome of an answered request or a processed case."""

ANSWERED: Final = frozenset({OK, "NOT_FOUND"})
"""Outcomes of an answered request: "no such record" is the back end's answer, delivered."""


@dataclass(frozen=True, slots=True)
class Detail:
    """The typed detail of one ledger entry; every field is optional.

    Attributes:
        outcome: ``OK``, ``NOT_FOUND`` or a reason code (UPPER_SNAKE).
        source: whose check gave ``outcome`` (:class:`Source`), when not this region's own.
        altered: the other region's refusal names another request digest than ours: the request was
            altered in transit.
        fields: catalogue field paths a refusal names (checked safe by the writer, ``?`` otherwise).
        case_no: the case (办件编号) a durable request belongs to.
        attempt: which delivery of a durable request this is (1 for the first).
        seq: the sequence number of a case status event.
        status: the case status (``CaseStatus`` number) an event carries.
        event_id: the message id of the event envelope that carried a status.
        stream: the JetStream stream a request was published to.
        resend: how many times the reconciler re-sent the request.
        dlq_seq: the dead-letter stream sequence an operator replayed.
        held_size, held_root, new_size, new_root: a witness alarm's two checkpoints (roots in base64).
    """

    outcome: str = ""
    source: str = ""
    altered: bool = False
    fields: tuple[str, ...] = field(default=())
    case_no: str = ""
    attempt: int | None = None
    seq: int | None = None
    status: int | None = None
    event_id: str = ""
    stream: str = ""
    resend: int | None = None
    dlq_seq: int | None = None
    held_size: int | None = None
    held_root: str = ""
    new_size: int | None = None
    new_root: str = ""

    # -- the stored form ---------------------------------------------------------------------------

    def encode(self) -> str:
        """The canonical JSON text stored in the entry (sorted keys, no whitespace, no empty fields)."""
        # Not dataclasses.asdict: it deep-copies, and this runs for every ledger entry written.
        data = {
            name: list(v) if isinstance(v, tuple) else v
            for name in _FIELD_NAMES
            if not _empty(v := getattr(self, name))
        }
        return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False) if data else ""

    @classmethod
    def decode(cls, text: str, *, event: str = "") -> Detail:
        """The detail of an entry of ``event``, whichever release wrote it.

        ``event`` matters only for the older notes, where a bare word was a case number (SUBMITTED),
        a stream name (PUBLISHED) or a reason (any other event).
        """
        text = text.strip()
        if text.startswith("{"):
            try:
                raw = json.loads(text)
            except ValueError:
                return cls(outcome=text)
            return cls._from_mapping(raw) if isinstance(raw, dict) else cls(outcome=text)
        return _decode_note(text, event)

    @classmethod
    def _from_mapping(cls, raw: dict[str, Any]) -> Detail:
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in raw:
                continue
            value = raw[f.name]
            if f.name == "fields":
                kwargs[f.name] = tuple(str(v) for v in value) if isinstance(value, list) else ()
            elif f.name == "altered":
                kwargs[f.name] = value is True
            elif f.type == "int | None":
                kwargs[f.name] = value if isinstance(value, int) and not isinstance(value, bool) else None
            else:
                kwargs[f.name] = str(value)
        return cls(**kwargs)

    # -- for operators -----------------------------------------------------------------------------

    def render(self, *, event: str = "") -> str:
        """The detail of an entry of ``event`` as operators have always read it (the older notes)."""
        if self.held_size is not None or self.new_size is not None:
            return (
                f"{self.outcome}: held size {self.held_size} root {self.held_root}, "
                f"new size {self.new_size} root {self.new_root}"
            )
        if event == "SUBMITTED" and self._case_only():
            return self.case_no
        parts = [
            f"{key}={value}"
            for key, value in (
                ("case", self.case_no),
                ("attempt", self.attempt),
                ("seq", self.seq),
                ("status", self.status),
                ("dlq-replay seq", self.dlq_seq),
                ("resend", self.resend),
            )
            if not _empty(value)
        ]
        if parts:
            if self.outcome:
                parts.append(f"reason={self.outcome}")
            if self.event_id:
                parts.append(f"event={self.event_id}")
            return " ".join(parts)
        if self.stream and not self.outcome:
            return self.stream
        text = f"{self.source}: {self.outcome}" if self.source else self.outcome
        if self.fields:
            text += ": " + ",".join(self.fields)
        if self.altered:
            text += " (request altered in transit)"
        return text

    def _case_only(self) -> bool:
        return bool(self.case_no) and self == Detail(case_no=self.case_no)


_FIELD_NAMES: Final = tuple(f.name for f in fields(Detail))


def _empty(value: object) -> bool:
    # Not ``in ("", None, False, ())``: 0 == False, and a sequence or status 0 is a value.
    return value is None or value is False or value == "" or value == ()


def _decode_note(text: str, event: str) -> Detail:
    """The grammar of the notes written before details were typed (see the module docstring):

    ``key=value`` words (``case``, ``attempt``, ``seq``, ``status``, ``reason``, ``event``,
    ``resend``; ``dlq-replay seq=N reason=R``); ``SOURCE: REASON`` with an optional
    ``(request altered in transit)``; ``REASON: path,path``; a witness alarm
    ``REASON: held size N root R, new size M root S``; a bare case number, stream name or reason.
    """
    if not text:
        return Detail()
    head, sep, tail = text.partition(":")
    if sep and head in Source.__members__ and not tail.startswith(" held size "):
        rest = tail.strip()
        altered = rest.endswith("(request altered in transit)")
        outcome = rest.split(" (", 1)[0].strip()
        return Detail(outcome=outcome, source=head, altered=altered)
    words = text.split()
    if any("=" in w for w in words):
        pairs = dict(w.split("=", 1) for w in words if "=" in w)
        number = _number
        dlq = words[0] == "dlq-replay"
        return Detail(
            outcome=pairs.get("reason", ""),
            case_no=pairs.get("case", ""),
            attempt=number(pairs.get("attempt")),
            seq=None if dlq else number(pairs.get("seq")),
            status=number(pairs.get("status")),
            event_id=pairs.get("event", ""),
            resend=number(pairs.get("resend")),
            dlq_seq=number(pairs.get("seq")) if dlq else None,
        )
    if sep and tail.startswith(" held size "):
        w = tail.replace(",", "").split()  # held size N root R new size M root S
        return Detail(
            outcome=head,
            held_size=_number(w[2]),
            held_root=w[4],
            new_size=_number(w[7]),
            new_root=w[9],
        )
    if sep:
        return Detail(outcome=head, fields=tuple(p.strip() for p in tail.split(",") if p.strip()))
    if event == "SUBMITTED":
        return Detail(case_no=text)
    if event == "PUBLISHED":
        return Detail(stream=text)
    return Detail(outcome=text)


def _number(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None
