"""Ledger entries as the gateway and the connector write them: typed details, named fields.

The ledger takes an :class:`~ledger.EntryDraft` whose ``detail`` is text; every writer goes through
:func:`draft`, so the text is always a :class:`~tongban.core.details.Detail` in its stored form.
"""

from __future__ import annotations

from ledger import EntryDraft, Event
from tongban.core.details import Detail

_NONE = Detail()


def draft(
    event: Event,
    message_id: str,
    *,
    peer: str,
    service: str,
    digest: bytes = b"",
    trace_id: str = "",
    detail: Detail = _NONE,
    time_ns: int | None = None,
) -> EntryDraft:
    """The entry for ``event`` of ``message_id`` exchanged with region ``peer`` for ``service``.

    Args:
        event: what happened.
        message_id: the exchange message the entry is about.
        peer: the other region (``?`` when it is caller text nobody has checked).
        service: the catalogue service (``?`` likewise).
        digest: SHA-256 of the envelope, when there is one.
        trace_id: the W3C trace id, or empty.
        detail: what else the entry says (ids, codes and counts only).
        time_ns: when it happened; ``None`` is the moment the ledger appends it.
    """
    return EntryDraft(
        event,
        message_id,
        peer,
        service,
        envelope_digest=digest,
        trace_id=trace_id,
        detail=detail.encode(),
        time_ns=time_ns,
    )
