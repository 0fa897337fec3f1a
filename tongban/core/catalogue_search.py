"""Keyword search over the catalogue, in Chinese and English: what ``SearchServices`` and ``tongban
catalogue search`` answer.

Why character n-grams and not a word segmenter. A segmenter such as jieba needs its dictionary
(about 1 s to load, and its last release is from 2020), and its words are the wrong unit for a small,
official vocabulary: 公积金 must find 住房公积金提取 whichever way a dictionary cuts 住房公积金, and
a partner types 医保 or 异地就医 as often as the full item name. Overlapping character bigrams
match those substrings whatever the word boundaries (the approach of CJK search engines without a
dictionary, e.g. Lucene's CJKAnalyzer), cost nothing to build for a few hundred items, and need no
dependency. Single characters are indexed too, weakly, so a one-character query still finds
something; English (``name_en``, codes) is matched by lower-cased words, a word also matching longer
words it begins (``fund`` → ``funds``).

Scoring, for one item:

- each query term present in a field adds ``field weight × term weight × idf`` (idf = ``log(1 + N /
  items holding the term)``, so a character every item has counts for little). Field weights: name
  5, alias 4, category 3, English name 3, item code 3, description 2, department 1.5; term
  weights: bigram 2, word 1.5, word prefix 1, single character 0.5;
- a query run of Chinese characters found verbatim in the name, an alias, the category or the
  description adds a phrase bonus (6, 5, 3, 2), and the query equal to the item code adds 20;
- the sum is multiplied by the share of the query's key terms the item contains (its bigrams, or its
  single characters for one-character runs, and its words), so an item that matches more of the
  query wins over one that matches part of it in many fields; an item with less than half of them
  is not a hit at all: 公积金 does not find 养老金 through 金.

Hits come best first, ties in catalogue order.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from tongban.core.catalogue import Catalogue, CatalogueItem

__all__ = ["CatalogueIndex", "Hit", "terms"]

_RUNS = re.compile(r"(?P<cjk>[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+)|(?P<word>[a-z0-9]+)")

FIELD_WEIGHTS = {
    "name": 5.0,
    "alias": 4.0,
    "category": 3.0,
    "name_en": 3.0,
    "description": 2.0,
    "department": 1.5,
    "code": 3.0,
}
_PHRASE_BONUS = {"name": 6.0, "alias": 5.0, "category": 3.0, "description": 2.0}
_CODE_BONUS = 20.0
_BIGRAM, _WORD, _PREFIX, _UNIGRAM = 2.0, 1.5, 1.0, 0.5
_MIN_COVERAGE = 0.5
_MIN_PREFIX = 3
"""A query word shorter than this matches whole words only."""


def _normal(text: str) -> str:
    """Full-width forms folded (ＡＢＣ → abc), lower case."""
    return unicodedata.normalize("NFKC", text).lower()


def _runs(text: str) -> Iterator[tuple[str, str]]:
    for m in _RUNS.finditer(_normal(text)):
        yield ("cjk", m["cjk"]) if m["cjk"] else ("word", m["word"])


def terms(text: str) -> set[str]:
    """The index terms of ``text``: Chinese characters and overlapping bigrams, lower-case words."""
    out: set[str] = set()
    for kind, run in _runs(text):
        if kind == "word":
            out.add(run)
            continue
        out.update(run)
        out.update(run[i : i + 2] for i in range(len(run) - 1))
    return out


@dataclass(frozen=True)
class Hit:
    """One matching item and its score (higher is better)."""

    item: CatalogueItem
    score: float


@dataclass
class _Doc:
    item: CatalogueItem
    terms: dict[str, set[str]] = field(default_factory=dict)
    """Terms by field name."""
    texts: dict[str, list[str]] = field(default_factory=dict)
    """Normalised texts by field name (for phrase matches)."""
    words: set[str] = field(default_factory=set)

    def fields_with(self, term: str) -> Iterator[str]:
        return (name for name, ts in self.terms.items() if term in ts)


class CatalogueIndex:
    """The search index of one catalogue revision (build one per revision; it never changes).

    Args:
        catalogue: the catalogue to index (its items at this moment).
    """

    def __init__(self, catalogue: Catalogue) -> None:
        self.revision = catalogue.revision
        self._docs = [self._document(item) for item in catalogue]
        self._df: dict[str, int] = {}
        for doc in self._docs:
            for term in set().union(*doc.terms.values()):
                self._df[term] = self._df.get(term, 0) + 1

    @staticmethod
    def _document(item: CatalogueItem) -> _Doc:
        texts = {
            "name": [item.name],
            "alias": list(item.aliases),
            "category": [item.category],
            "name_en": [item.name_en],
            "description": [item.description],
            "department": [item.provider_department],
            "code": [item.code],
        }
        doc = _Doc(item)
        for name, values in texts.items():
            doc.texts[name] = [_normal(v) for v in values if v]
            doc.terms[name] = set().union(*(terms(v) for v in values)) if values else set()
        doc.words = {t for ts in doc.terms.values() for t in ts if t.isascii()}
        return doc

    def search(self, query: str, *, limit: int = 20) -> list[Hit]:
        """The items matching ``query``, best first, at most ``limit``."""
        runs = list(_runs(query))
        if not runs or limit <= 0:
            return []
        key_terms: list[tuple[str, ...]] = []
        weighted: dict[str, float] = {}
        for kind, run in runs:
            if kind == "word":
                key_terms.append((run,))
                weighted[run] = _WORD
            elif len(run) == 1:
                key_terms.append((run,))
                weighted[run] = max(weighted.get(run, 0.0), _BIGRAM)
            else:
                grams = [run[i : i + 2] for i in range(len(run) - 1)]
                key_terms.extend((g,) for g in grams)
                for g in grams:
                    weighted[g] = _BIGRAM
                for ch in run:
                    weighted.setdefault(ch, _UNIGRAM)
        key_terms = list(dict.fromkeys(key_terms))
        code = query.strip().upper()
        hits: list[tuple[float, int, Hit]] = []
        for position, doc in enumerate(self._docs):
            coverage = sum(1 for (t,) in key_terms if self._has(doc, t)) / len(key_terms)
            if coverage < _MIN_COVERAGE:
                continue
            score = coverage * self._score(doc, runs, weighted)
            score += _CODE_BONUS if doc.item.code == code else 0.0
            if score > 0:
                hits.append((-score, position, Hit(doc.item, round(score, 3))))
        hits.sort(key=lambda h: (h[0], h[1]))
        return [h for _, _, h in hits[:limit]]

    def _has(self, doc: _Doc, term: str) -> bool:
        if any(True for _ in doc.fields_with(term)):
            return True
        return term.isascii() and len(term) >= _MIN_PREFIX and any(w.startswith(term) for w in doc.words)

    def _idf(self, term: str) -> float:
        return math.log(1.0 + len(self._docs) / max(1, self._df.get(term, 0)))

    def _score(self, doc: _Doc, runs: Iterable[tuple[str, str]], weighted: dict[str, float]) -> float:
        score = 0.0
        for term, weight in weighted.items():
            found = list(doc.fields_with(term))
            if found:
                score += weight * self._idf(term) * sum(FIELD_WEIGHTS[f] for f in found)
            elif term.isascii() and len(term) >= _MIN_PREFIX:
                longer = {w for w in doc.words if w.startswith(term)}
                fields = {f for w in longer for f in doc.fields_with(w)}
                score += _PREFIX * self._idf(term) * sum(FIELD_WEIGHTS[f] for f in fields)
        for kind, run in runs:
            if kind == "cjk" and len(run) >= 2:
                for name, bonus in _PHRASE_BONUS.items():
                    if any(run in text for text in doc.texts[name]):
                        score += bonus
        return score
