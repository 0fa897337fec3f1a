"""`tongban report` on a SQLite ledger of synthetic traffic whose true numbers the test knows.

One week (2026-03-02 .. 2026-03-09, UTC+8) of Shenzhen's (440300) ledger: queries and cases it sent to
Wuxi (320200) and Qingdao (370200), requests it answered, refusals, and entries that must not count
(a request opened before the week, a case event, a witness alarm, one opened after it). Every
request's outcome and latency are set through ``time_ns``; the report's counts, success rates,
percentiles, 堵点 order and daily volume are checked against them, through the functions and through
the command line (text, JSON and the chart file).
"""

from __future__ import annotations

import json
import math
import socket
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ledger.entry import EntryDraft, Event
from ledger.store_sqlite import SQLiteLedger
from tests.e2e.cli import tongban
from tongban.core.message_ids import new_message_id
from tongban.ops.cli import main
from tongban.ops.report import (
    Direction,
    Report,
    Stats,
    collect,
    parse_when,
    render_text,
    window_between,
    write_chart,
)

SZ, WX, QD = "440300", "320200", "370200"
PENSION_QUERY, CERT, TRANSFER = "SBJFJLCX0001", "YLDYZGRZ0001", "YLBXZYJX0001"
FUND, RECORD, LATE = "ZFGJJTQ00001", "WFZJLZM00001", "GJJDWKH00001"
SINCE, UNTIL = "2026-03-02", "2026-03-09"
T0, T_END = parse_when(SINCE), parse_when(UNTIL)
S, MS, HOUR, DAY = 10**9, 10**6, 3600 * 10**9, 86_400 * 10**9
DIGEST = b"\x01" * 32


@dataclass(frozen=True)
class Truth:
    """What one synthetic request is, as the report should count it."""

    direction: str
    service: str
    pair: str
    outcome: str
    reason: str
    latency_ns: int | None
    day: int


@dataclass
class Traffic:
    drafts: list[EntryDraft] = field(default_factory=list)
    truths: list[Truth] = field(default_factory=list)
    n: int = 0

    def mid(self, at: int) -> str:
        """A message id created at ``at`` (a ULID, as a gateway makes them)."""
        self.n += 1
        return new_message_id(at // MS)

    def add(
        self, event: Event, mid: str, peer: str, svc: str, at: int, detail: str = "", digest: bytes = DIGEST
    ) -> None:
        self.drafts.append(EntryDraft(event, mid, peer, svc, digest, "", detail, at))

    def query(
        self,
        peer: str,
        svc: str,
        at: int,
        latency: int,
        end: Event = Event.RESPONDED,
        detail: str = "OK",
        *,
        counted: bool = True,
    ) -> None:
        """A query this region sent; counted unless it is one of the entries that must not be."""
        m = self.mid(at)
        self.add(Event.SUBMITTED, m, peer, svc, at)
        self.add(end, m, peer, svc, at + latency, detail)
        if counted:
            ok = end == Event.RESPONDED and detail in ("OK", "NOT_FOUND")
            reason = "" if ok else failure_reason_of(detail, end)
            self.truths.append(
                Truth("out", svc, f"{SZ}→{peer}", "ok" if ok else "failed", reason, latency, _day(at))
            )

    def served(self, peer: str, svc: str, at: int, latency: int, outcome: str = "OK") -> None:
        """A query this region answered (RECEIVED→PROCESSED)."""
        m = self.mid(at)
        self.add(Event.RECEIVED, m, peer, svc, at)
        self.add(Event.PROCESSED, m, peer, svc, at + latency, outcome)
        ok = outcome == "OK"
        self.truths.append(
            Truth(
                "in", svc, f"{peer}→{SZ}", "ok" if ok else "failed", "" if ok else outcome, latency, _day(at)
            )
        )


def failure_reason_of(detail: str, end: Event) -> str:
    return {"REMOTE: NOT_AUTHORISED": "REMOTE:NOT_AUTHORISED"}.get(detail, detail or str(end))


def _day(at: int) -> int:
    return (at - T0) // DAY


def traffic() -> Traffic:
    t = Traffic()
    # Day 0: 20 queries to Wuxi, 10..200 ms; one expires, one is answered with a back-end timeout, one
    # with NOT_FOUND (an answer: ok).
    for i in range(1, 21):
        at = T0 + 9 * HOUR + i * 60 * S
        if i == 20:
            t.query(WX, PENSION_QUERY, at, i * 10 * MS, Event.EXPIRED, "NO_REPLY_IN_DEADLINE")
        elif i == 7:
            t.query(WX, PENSION_QUERY, at, i * 10 * MS, Event.RESPONDED, "BACKEND_TIMEOUT")
        else:
            t.query(WX, PENSION_QUERY, at, i * 10 * MS, detail="NOT_FOUND" if i == 3 else "OK")
    # Day 1: 10 queries to Qingdao, 1..10 s; every even one refused there.
    for i in range(1, 11):
        at = T0 + DAY + 10 * HOUR + i * 60 * S
        if i % 2 == 0:
            t.query(QD, CERT, at, i * S, Event.REJECTED, "REMOTE: NOT_AUTHORISED")
        else:
            t.query(QD, CERT, at, i * S)
    # Day 2: 6 cases to Wuxi: 4 answered after 30..33 s, one dead-lettered after 34 s, one pending.
    for i in range(6):
        at = T0 + 2 * DAY + 11 * HOUR + i * 600 * S
        m = t.mid(at)
        t.add(Event.SUBMITTED, m, WX, TRANSFER, at, f"CASE-{i}")
        t.add(Event.PUBLISHED, m, WX, TRANSFER, at + MS, "TONGBAN_IN_320200")
        if i == 5:
            t.truths.append(Truth("out", TRANSFER, f"{SZ}→{WX}", "pending", "", None, 2))
            continue
        if i == 4:
            t.add(
                Event.DEAD_LETTERED,
                m,
                WX,
                TRANSFER,
                at + 34 * S,
                f"seq=1 status=0 reason=BACKEND_FAILURE event=e{i}",
            )
            t.truths.append(Truth("out", TRANSFER, f"{SZ}→{WX}", "failed", "BACKEND_FAILURE", 34 * S, 2))
            continue
        t.add(Event.STATUS, m, WX, TRANSFER, at + (30 + i) * S, f"seq=1 status=1 event=e{i}")
        t.add(
            Event.STATUS, m, WX, TRANSFER, at + DAY, f"seq=2 status=11 event=f{i}"
        )  # 办结 later: not latency
        t.truths.append(Truth("out", TRANSFER, f"{SZ}→{WX}", "ok", "", (30 + i) * S, 2))
    # Day 3: 8 queries from Wuxi answered here: 7 in 5 ms, one back-end timeout after 3 s.
    for i in range(8):
        at = T0 + 3 * DAY + 14 * HOUR + i * S
        t.served(WX, FUND, at, 3 * S if i == 0 else 5 * MS, "BACKEND_TIMEOUT" if i == 0 else "OK")
    # Day 4: 5 cases from Qingdao handled here, each received twice (a retry): 4 processed after 2 s,
    # one dead-lettered after 60 s (its DEAD_LETTERED written twice, as a redelivery may).
    for i in range(5):
        at = T0 + 4 * DAY + 15 * HOUR + i * 300 * S
        m = t.mid(at)
        t.add(Event.RECEIVED, m, QD, RECORD, at, f"case=C{i} attempt=1")
        t.add(Event.RECEIVED, m, QD, RECORD, at + S, f"case=C{i} attempt=2")
        if i == 0:
            for again in (0, 1):
                t.add(
                    Event.DEAD_LETTERED,
                    m,
                    QD,
                    RECORD,
                    at + 60 * S + again,
                    f"case=C{i} reason=BACKEND_TIMEOUT",
                )
            t.truths.append(Truth("in", RECORD, f"{QD}→{SZ}", "failed", "BACKEND_TIMEOUT", 60 * S, 4))
        else:
            t.add(Event.PROCESSED, m, QD, RECORD, at + 2 * S, f"case=C{i}")
            t.add(Event.STATUS, m, QD, RECORD, at + 3 * S, f"seq=1 event=s{i}")
            t.truths.append(Truth("in", RECORD, f"{QD}→{SZ}", "ok", "", 2 * S, 4))
    # Day 5: 3 calls refused by this gateway before sealing (no digest).
    for i in range(3):
        t.add(
            Event.REJECTED,
            t.mid(T0 + 5 * DAY + i * S),
            WX,
            PENSION_QUERY,
            T0 + 5 * DAY + i * S,
            "INVALID_FIELD: request.fields.x",
            b"",
        )
        t.truths.append(Truth("out", PENSION_QUERY, f"{SZ}→{WX}", "failed", "INVALID_FIELD", None, 5))
    # Day 6: 10 envelopes from Qingdao refused by this connector, all in one nanosecond.
    burst = T0 + 6 * DAY + 10 * HOUR
    for _ in range(10):
        t.add(Event.REJECTED, t.mid(burst - S), QD, RECORD, burst, "SIGNATURE_INVALID")
        t.truths.append(Truth("in", RECORD, f"{QD}→{SZ}", "failed", "SIGNATURE_INVALID", None, 6))
    # The week's last minute: a query answered only after the week (its outcome is looked up).
    t.query(WX, LATE, T_END - 60 * S, 120 * S)
    # Not this week's requests: opened before it (concluded inside it), a case event refusal, a
    # witness alarm, one opened after the week.
    t.query(WX, PENSION_QUERY, T0 - HOUR, 2 * HOUR, counted=False)
    t.query(WX, PENSION_QUERY, T0 - HOUR, 3 * HOUR, Event.EXPIRED, "NO_REPLY_IN_DEADLINE", counted=False)
    t.add(Event.REJECTED, t.mid(T0 + 2 * HOUR), "?", "?", T0 + 2 * HOUR, "EVENT: SIGNATURE_INVALID")
    t.add(Event.WITNESS_ALARM, f"witness-{WX}-3-2", WX, "", T0 + 3 * HOUR, "size 3 -> 2", b"")
    t.query(WX, PENSION_QUERY, T_END + S, 5 * MS, counted=False)
    return t


@pytest.fixture
async def synthetic(tmp_path: Path) -> AsyncIterator[tuple[Path, Traffic]]:
    t = traffic()
    async with SQLiteLedger(tmp_path / "ledger.sqlite", SZ) as ledger:
        await ledger.append(*t.drafts)
    (tmp_path / "node.toml").write_text(
        f'[region]\ncode = "{SZ}"\n[ledger]\npath = "ledger.sqlite"\n', encoding="utf-8"
    )
    yield tmp_path, t


def expected_stats(truths: list[Truth]) -> Stats:
    """The statistics computed here from the truths, independently of tongban.ops.report."""
    ok = sum(x.outcome == "ok" for x in truths)
    failed = sum(x.outcome == "failed" for x in truths)
    lat = sorted(x.latency_ns for x in truths if x.latency_ns is not None)

    def p(q: int) -> float | None:
        return lat[math.ceil(q * len(lat) / 100) - 1] / MS if lat else None

    reasons: dict[str, int] = {}
    for x in truths:
        if x.outcome == "failed":
            reasons[x.reason] = reasons.get(x.reason, 0) + 1
    return Stats(
        len(truths),
        ok,
        failed,
        len(truths) - ok - failed,
        ok / (ok + failed) if ok + failed else None,
        p(50),
        p(90),
        p(99),
        tuple(sorted(reasons.items(), key=lambda kv: -kv[1])),
    )


def same(actual: Stats, expected: Stats) -> None:
    assert (actual.requests, actual.ok, actual.failed, actual.pending) == (
        expected.requests,
        expected.ok,
        expected.failed,
        expected.pending,
    )
    assert actual.success_rate == pytest.approx(expected.success_rate)
    assert (actual.p50_ms, actual.p90_ms, actual.p99_ms) == (
        expected.p50_ms,
        expected.p90_ms,
        expected.p99_ms,
    )
    assert dict(actual.reasons) == dict(expected.reasons)


async def _report(path: Path, chunk: int = 5000) -> Report:
    async with SQLiteLedger(path / "ledger.sqlite", SZ) as ledger:
        return await collect(ledger, window_between(SINCE, UNTIL), chunk=chunk)


async def test_report_numbers_match_the_ledger(synthetic: tuple[Path, Traffic]) -> None:
    path, t = synthetic
    report = await _report(path)
    assert len(t.truths) == 63
    same(report.total, expected_stats(t.truths))
    # Hand-checked anchors, so the independent computation above cannot share a mistake unseen.
    assert (report.total.requests, report.total.ok, report.total.failed, report.total.pending) == (
        63,
        39,
        23,
        1,
    )
    by_dir = {r.key: r.stats for r in report.directions}
    assert (by_dir["out"].requests, by_dir["in"].requests) == (40, 23)
    for d in Direction:
        same(by_dir[d], expected_stats([x for x in t.truths if x.direction == d]))

    services = {(r.direction, r.key): r.stats for r in report.services}
    assert set(services) == {(x.direction, x.service) for x in t.truths}
    for key, stats in services.items():
        same(stats, expected_stats([x for x in t.truths if (x.direction, x.service) == key]))
    cert = services[("out", CERT)]
    assert (cert.requests, cert.failed, cert.p50_ms, cert.p90_ms, cert.p99_ms) == (10, 5, 5000, 9000, 10000)
    assert (services[("in", FUND)].p50_ms, services[("in", FUND)].p90_ms) == (5, 3000)
    assert services[("out", LATE)].p50_ms == 120_000 and services[("out", LATE)].ok == 1

    pairs = {r.key: r.stats for r in report.pairs}
    assert {k: v.requests for k, v in pairs.items()} == {
        f"{SZ}→{WX}": 30,
        f"{SZ}→{QD}": 10,
        f"{WX}→{SZ}": 8,
        f"{QD}→{SZ}": 15,
    }
    for pair, stats in pairs.items():
        same(stats, expected_stats([x for x in t.truths if x.pair == pair]))

    # 堵点: groups of at least 5 requests (the late query's service, 1 request, is not one).
    assert [(r.direction, r.key) for r in report.slowest_services] == [
        ("in", RECORD),
        ("out", TRANSFER),
        ("out", CERT),
        ("in", FUND),
        ("out", PENSION_QUERY),
    ]
    assert [(r.direction, r.key) for r in report.failing_services] == [
        ("in", RECORD),
        ("out", CERT),
        ("out", PENSION_QUERY),
        ("out", TRANSFER),
        ("in", FUND),
    ]
    assert [r.key for r in report.slowest_pairs][:2] == [f"{QD}→{SZ}", f"{SZ}→{WX}"]
    assert report.failing_pairs[0].key == f"{QD}→{SZ}"

    assert [b.label for b in report.buckets] == [f"2026-03-0{d}" for d in range(2, 9)]
    assert [b.requests for b in report.buckets] == [sum(x.day == d for x in t.truths) for d in range(7)]
    assert [b.requests for b in report.buckets] == [20, 10, 6, 8, 5, 3, 11]
    assert [b.failed for b in report.buckets] == [2, 5, 1, 1, 1, 3, 10]


async def test_small_chunks_give_the_same_report(synthetic: tuple[Path, Traffic]) -> None:
    path, _ = synthetic
    whole, chunked = await _report(path), await _report(path, chunk=3)
    # chunk=3 splits nanoseconds (10 refusals share one) and must neither lose nor repeat an entry.
    assert (chunked.total, chunked.services, chunked.pairs, chunked.buckets) == (
        whole.total,
        whole.services,
        whole.pairs,
        whole.buckets,
    )


async def test_cli_prints_tables_json_and_writes_the_chart(synthetic: tuple[Path, Traffic]) -> None:
    path, _ = synthetic
    cfg, png = str(path / "node.toml"), path / "briefing.png"
    rc, out, err = await tongban(
        "report", "--config", cfg, "--since", SINCE, "--until", UNTIL, "--chart", str(png)
    )
    assert rc == 0, err
    assert f"region {SZ} · 2026-03-02 00:00 → 2026-03-09 00:00" in out
    assert "requests 63 · ok 39 · failed 23 · pending 1 · success 62.9%" in out
    for title in (
        "By direction",
        "By service",
        "By region pair",
        "堵点 · slowest",
        "堵点 · most failing",
        "Volume by day",
    ):
        assert title in out
    row = next(line.split() for line in out.splitlines() if f"out  {CERT}" in line)
    # dir, service, name, requests, ok, failed, pending, success, p50, p90, p99 (two words each)
    assert row[:8] == ["out", CERT, "养老保险待遇领取资格认证", "10", "5", "5", "0", "50.0%"]
    assert row[8:] == ["5.0", "s", "9.0", "s", "10.0", "s"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000

    rc, out, err = await tongban("report", "--config", cfg, "--since", SINCE, "--until", UNTIL, "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["region"] == SZ and doc["period"]["bucket"] == "day"
    assert doc["period"]["since"] == "2026-03-02T00:00:00+08:00"
    assert {k: doc["total"][k] for k in ("requests", "ok", "failed", "pending")} == {
        "requests": 63,
        "ok": 39,
        "failed": 23,
        "pending": 1,
    }
    svc = {(r["direction"], r["key"]): r for r in doc["services"]}
    assert svc[("out", CERT)]["latency_ms"] == {"p50": 5000.0, "p90": 9000.0, "p99": 10000.0}
    assert svc[("out", CERT)]["name"] == "养老保险待遇领取资格认证"
    assert svc[("in", RECORD)]["failure_reasons"] == {"SIGNATURE_INVALID": 10, "BACKEND_TIMEOUT": 1}
    assert doc["bottlenecks"]["slowest_services"][0]["key"] == RECORD
    assert [b["requests"] for b in doc["buckets"]] == [20, 10, 6, 8, 5, 3, 11]


async def test_svg_chart_keeps_its_labels_as_text(synthetic: tuple[Path, Traffic]) -> None:
    path, _ = synthetic
    svg = write_chart(await _report(path), path / "briefing.svg")
    root = ET.parse(svg).getroot()
    assert root.tag.endswith("svg")
    text = " ".join("".join(el.itertext()) for el in root.iter() if el.tag.endswith("text"))
    assert f"region {SZ}" in text and f"in {RECORD}" in text and f"{QD}->{SZ}" in text
    assert "11/15 SIGNATURE_INVALID" in text  # the most failing service, annotated
    assert svg.stat().st_size > 20_000
    with pytest.raises(ValueError, match=r"\.png or \.svg"):
        write_chart(await _report(path), path / "briefing.pdf")


async def test_cli_period_week_ends_now_and_mistakes_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    now = time.time_ns()
    async with SQLiteLedger(tmp_path / "ledger.sqlite", SZ) as ledger:
        for i, m in enumerate(("a", "b", "c")):
            at = now - DAY - i * HOUR
            await ledger.append(
                EntryDraft(Event.SUBMITTED, m, WX, PENSION_QUERY, DIGEST, "", "", at),
                EntryDraft(
                    Event.RESPONDED, m, WX, PENSION_QUERY, DIGEST, "", "OK" if i else "X", at + 40 * MS
                ),
            )
        # Eight days ago: outside the week.
        await ledger.append(
            EntryDraft(Event.SUBMITTED, "old", WX, PENSION_QUERY, DIGEST, "", "", now - 8 * DAY)
        )
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'[region]\ncode = "{SZ}"\n[ledger]\npath = "ledger.sqlite"\n', encoding="utf-8")
    rc, out, err = await tongban("report", "--config", str(cfg), "--period", "week", "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert (doc["total"]["requests"], doc["total"]["ok"], doc["total"]["failed"]) == (3, 2, 1)
    assert doc["total"]["latency_ms"]["p50"] == 40.0 and len(doc["buckets"]) == 7

    for args, message in (
        ((), "give --config or --region"),
        (("--config", str(cfg), "--chart", "x.pdf"), ".png or .svg"),
        (("--config", str(cfg), "--since", "yesterday"), "Invalid isoformat"),
        (("--config", str(cfg), "--until", "2026-01-01"), "--until goes with --since"),
    ):
        # In this process: these are refused before any config or ledger is touched.
        rc = main(["report", *args])
        err = capsys.readouterr().err
        assert rc == 2 and message in err, (args, err)
    (tmp_path / "ledger.sqlite").rename(tmp_path / "moved.sqlite")
    rc, _, err = await tongban("report", "--config", str(cfg))
    assert rc == 1 and "no ledger at" in err


async def test_an_empty_period_renders(tmp_path: Path) -> None:
    async with SQLiteLedger(tmp_path / "ledger.sqlite", SZ) as ledger:
        report = await collect(ledger, window_between(SINCE, UNTIL))
    assert report.total.requests == 0 and report.total.success_rate is None
    assert "requests 0" in render_text(report) and "(none)" in render_text(report)
    write_chart(report, tmp_path / "empty.svg")
    assert ET.parse(tmp_path / "empty.svg").getroot().tag.endswith("svg")


async def test_cli_names_what_it_cannot_do_in_one_line(synthetic: tuple[Path, Traffic]) -> None:
    """A chart into a directory that is not there: said before the ledger is read (no tables, no
    traceback). A ledger that cannot be opened (PostgreSQL down): one line too."""
    path, _ = synthetic
    cfg = str(path / "node.toml")
    rc, out, err = await tongban(
        "report",
        "--config",
        cfg,
        "--since",
        SINCE,
        "--until",
        UNTIL,
        "--chart",
        str(path / "nodir" / "x.png"),
    )
    assert (rc, out) == (1, "")
    assert err.splitlines() == [
        f"tongban report: --chart {path / 'nodir' / 'x.png'}: no directory {path / 'nodir'}"
    ]

    with socket.socket() as s:  # a port nothing listens on: the database is down
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pg = path / "pg.toml"
    pg.write_text(
        f'[region]\ncode = "{SZ}"\n[ledger]\nbackend = "postgres"\n'
        f'dsn = "postgresql://postgres@127.0.0.1:{port}/tongban"\n',
        encoding="utf-8",
    )
    rc, out, err = await tongban("report", "--config", str(pg), "--since", SINCE, "--until", UNTIL)
    assert (rc, out) == (1, "")
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"tongban report: cannot read the ledger of {SZ}: cannot connect"), err
