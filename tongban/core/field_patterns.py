"""The regular expressions a catalogue may set on a form field (``FieldSpec.pattern``).

A pattern is catalogue text, matched against partners' values on every request. Python's ``re`` has
no time limit, so a pattern is checked once, when the catalogue loads, for the shapes that make a
backtracking engine take exponential or high-polynomial time, and a value reaches its pattern only
after its length was bounded (``max_length``, else the node's default, 256 characters):

- at most :data:`MAX_PATTERN_LENGTH` characters;
- the common subset of Python's ``re`` and RE2 (the proto says so, and partners in other languages
  check the same pattern): no back-references, look-arounds or conditional groups;
- no variable repeat (``*``, ``+``, ``?``, ``{m,n}`` with m < n) inside another variable repeat, nor
  an alternation inside a variable repeat (``(a+)+``, ``(a|ab)*``: the classic catastrophic shapes),
  unless each iteration of the outer repeat begins with a literal character nothing else in it can
  match: a delimiter fixes where iterations begin, as in the list ``(A|B)(,(A|B))*``;
- at most :data:`MAX_VARIABLE_REPEATS` variable repeats in all (``\\d*\\d*\\d*…`` backtracks in
  polynomial time of that degree).

What passes is matched with ``fullmatch``: the whole value, not a part of it.
"""

from __future__ import annotations

import functools
import re
import re._parser as sre  # the stdlib's parser of re syntax (``sre_parse`` until 3.11)
from typing import Any, Final

from tongban.core.errors import ConfigError

__all__ = ["MAX_PATTERN_LENGTH", "MAX_VARIABLE_REPEATS", "compiled"]

MAX_PATTERN_LENGTH: Final = 256
MAX_VARIABLE_REPEATS: Final = 4

_REPEATS = {sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT}
_REFUSED = {
    sre.GROUPREF: "a back-reference",
    sre.GROUPREF_EXISTS: "a conditional group",
    sre.ASSERT: "a look-ahead or look-behind",
    sre.ASSERT_NOT: "a look-ahead or look-behind",
    sre.ATOMIC_GROUP: "an atomic group",
    sre.POSSESSIVE_REPEAT: "a possessive repeat",
}


@functools.lru_cache(maxsize=1024)
def compiled(pattern: str) -> re.Pattern[str]:
    """The checked, compiled ``pattern`` (cached: a catalogue's patterns are compiled once).

    Raises:
        ConfigError: too long, not a regular expression, outside the RE2 subset, or of a shape that
            can take catastrophic time (see the module docstring).
    """
    shown = repr(pattern[:40])
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise ConfigError(f"pattern {shown}… is longer than {MAX_PATTERN_LENGTH} characters")
    try:
        parsed = sre.parse(pattern)
        result = re.compile(pattern)
    except (re.error, RecursionError, OverflowError) as exc:
        raise ConfigError(f"pattern {shown} is not a regular expression: {exc}") from exc
    try:
        repeats = _check(list(parsed), inside_variable=False)
    except ConfigError as exc:
        raise ConfigError(f"pattern {shown}: {exc.message}") from None
    if repeats > MAX_VARIABLE_REPEATS:
        raise ConfigError(f"pattern {shown} has more than {MAX_VARIABLE_REPEATS} variable repeats")
    return result


def _check(items: list[tuple[Any, Any]], *, inside_variable: bool) -> int:
    """Refuse what the module docstring names; the number of variable repeats in ``items``."""
    count = 0
    for op, arg in items:
        if op in _REFUSED:
            raise ConfigError(f"{_REFUSED[op]} is not allowed (RE2 has none)")
        if op in _REPEATS:
            low, high, body = arg
            variable = low != high
            if variable and inside_variable:
                raise ConfigError("a variable repeat inside another may take catastrophic time")
            # Iterations that begin with their own delimiter cannot overlap: what is inside is free.
            inside = (inside_variable or variable) and not (variable and _delimited(list(body)))
            count += variable + _check(list(body), inside_variable=inside)
        elif op == sre.SUBPATTERN:
            count += _check(list(arg[-1]), inside_variable=inside_variable)
        elif op == sre.BRANCH:
            if inside_variable:
                raise ConfigError("an alternation repeated variably may take catastrophic time")
            count += sum(_check(list(branch), inside_variable=False) for branch in arg[1])
    return count


def _delimited(body: list[tuple[Any, Any]]) -> bool:
    """Whether ``body`` begins with a literal character nothing else in it can match."""
    while len(body) == 1 and body[0][0] == sre.SUBPATTERN:
        body = list(body[0][1][-1])
    if not body or body[0][0] != sre.LITERAL:
        return False
    return not _may_match(body[1:], body[0][1])


def _may_match(items: list[tuple[Any, Any]], code: int) -> bool:
    """Whether any node of ``items`` could match the character ``code`` (when unsure: yes)."""
    for op, arg in items:
        if op == sre.AT:
            continue
        if op == sre.LITERAL:
            hit = arg == code
        elif op == sre.NOT_LITERAL:
            hit = arg != code
        elif op == sre.IN:
            hit = _in_class(arg, code)
        elif op == sre.SUBPATTERN:
            hit = _may_match(list(arg[-1]), code)
        elif op == sre.BRANCH:
            hit = any(_may_match(list(branch), code) for branch in arg[1])
        elif op in _REPEATS:
            hit = _may_match(list(arg[2]), code)
        else:  # ANY and whatever else: assume it can
            hit = True
        if hit:
            return True
    return False


_CATEGORIES = {
    sre.CATEGORY_DIGIT: r"\d",
    sre.CATEGORY_NOT_DIGIT: r"\D",
    sre.CATEGORY_SPACE: r"\s",
    sre.CATEGORY_NOT_SPACE: r"\S",
    sre.CATEGORY_WORD: r"\w",
    sre.CATEGORY_NOT_WORD: r"\W",
}


def _in_class(items: list[tuple[Any, Any]], code: int) -> bool:
    negate, hit = False, False
    for op, arg in items:
        if op == sre.NEGATE:
            negate = True
        elif op == sre.LITERAL:
            hit = hit or arg == code
        elif op == sre.RANGE:
            hit = hit or arg[0] <= code <= arg[1]
        elif op == sre.CATEGORY and arg in _CATEGORIES:
            hit = hit or re.fullmatch(_CATEGORIES[arg], chr(code)) is not None
        else:
            hit = True
    return hit != negate
