"""What text a partner may send: the characters refused in names, form values and free text.

The receiving region shows these values to its case workers and writes them into its case system;
a value is also rendered in consoles and reports. Characters that change how the text around them
is displayed, or that end a line or a string early, make that display lie: a name with U+202E
(RIGHT-TO-LEFT OVERRIDE) shows its letters in another order, a NUL cuts a C string short, a line
separator forges a second log or report line. The rule, applied by the catalogue check on both the
sending gateway and the providing connector:

* every text field refuses control characters (Unicode category Cc: C0 including NUL and TAB,
  DEL, C1), the line and paragraph separators U+2028 and U+2029, the bidirectional formatting
  characters (U+061C, U+200E, U+200F, U+202A-U+202E, U+2066-U+2069), unpaired surrogates and
  noncharacters (U+FDD0-U+FDEF, U+xxFFFE, U+xxFFFF);
* identity fields (the applicant's name, the requester's organisation, department and operator,
  the data grade) refuse, in addition, every other format character (category Cf: zero-width
  spaces and joiners, soft hyphen, byte-order mark, tag characters): a name needs none of them, and
  they let two different strings look the same.

A refusal names the field and the code point's category, never the value.
"""

from __future__ import annotations

import unicodedata

BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069",
)
"""Bidirectional formatting characters (Unicode UAX #9, "explicit directional formatting characters"
plus the implicit marks)."""

_SEPARATORS = frozenset("\u2028\u2029")


def _is_noncharacter(ch: str) -> bool:
    cp = ord(ch)
    return 0xFDD0 <= cp <= 0xFDEF or (cp & 0xFFFE) == 0xFFFE


def unsafe_character(value: str, *, identity: bool = False) -> str | None:
    """Describe the first character of ``value`` the rule above refuses, or None if there is none.

    Args:
        value: the text as the partner sent it.
        identity: apply the stricter rule for identity fields (format characters refused too).

    Returns:
        A sentence for a field violation naming the kind of character and its code point (never the
        value itself), or None.
    """
    for ch in value:
        category = unicodedata.category(ch)
        if category == "Cc":
            what = "a control character"
        elif ch in BIDI_CONTROLS:
            what = "a bidirectional formatting character"
        elif ch in _SEPARATORS:
            what = "a line or paragraph separator"
        elif category == "Cs" or _is_noncharacter(ch):
            what = "a surrogate or noncharacter"
        elif identity and category == "Cf":
            what = "an invisible formatting character"
        else:
            continue
        return f"Contains {what} (U+{ord(ch):04X})."
    return None
