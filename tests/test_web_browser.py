"""The web console in a real browser: Debian's chromium, driven by Playwright (never a
downloaded browser). Each page renders the store's real data; filters and paging give what
``krepis logs`` gives; live mode shows a new entry within a second; the plots count what the
journal holds; verification in the browser says ✓ on an honest server and ✗ when the entry, the
proof or the checkpoint is altered in transit or the history was rewritten between two visits;
hostile journal texts never run; the keyboard reaches every control.

Without chromium (Debian: ``chromium``) or Playwright these tests are skipped — or fail, with
``KREPIS_REQUIRE_BROWSER=1`` or ``CI=true`` (``.ci/run`` installs chromium and sets it).
``KREPIS_WEB_SCREENSHOTS=DIR`` writes the pages' screenshots (docs/web/) there.
"""
from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from krepis import LogStatus, SovereignJournal, TransactionLog
from krepis.tlog import Signer
from test_cli import krepis
from webtools import (
    ARCHIVED,
    ENTRIES,
    HOSTILE_ERROR,
    HOSTILE_OP,
    HOSTILE_RID,
    T0,
    Served,
    console_entries,
    make_console_store,
    served,
)


def _require() -> tuple[Any, str]:
    required = os.environ.get("CI") == "true" or os.environ.get("KREPIS_REQUIRE_BROWSER") == "1"
    chromium = shutil.which("chromium")
    try:
        from playwright.sync_api import sync_playwright

        import krepis.web  # noqa: F401  (the web extra)
    except ImportError as exc:
        message = f"the browser tests need Playwright and the web extra: {exc}"
        (pytest.fail if required else pytest.skip)(message)
    if chromium is None:
        (pytest.fail if required else pytest.skip)("chromium is not installed (Debian: chromium)")
    assert chromium is not None
    return sync_playwright, chromium


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_playwright, chromium = _require()
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Signer]:
    path = tmp_path_factory.mktemp("browser") / "storage"
    return path, make_console_store(path)


@pytest.fixture(scope="module")
def console(store: tuple[Path, Signer]) -> Iterator[Served]:
    from krepis.web import create_app

    with served(create_app(store[0])) as server:
        yield server


class Page:
    """A fresh browser context and page that records dialogs, page errors and CSP violations."""

    def __init__(self, browser: Any, width: int = 1280) -> None:
        self.context = browser.new_context(viewport={"width": width, "height": 900})
        self.context.add_init_script(
            "window.__violations = [];"
            "document.addEventListener('securitypolicyviolation', e => window.__violations.push("
            "e.violatedDirective + ' ' + e.blockedURI));")
        self.page = self.context.new_page()
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.set_default_timeout(15_000)

    def open(self, url: str) -> Any:
        self.page.goto(url)
        self.page.wait_for_selector("main h1")
        self.page.wait_for_selector("main[aria-busy=false]", state="attached")  # the page's data shown
        return self.page

    def clean(self) -> None:
        """Nothing ran that should not have: no dialog, no payload's global, no CSP violation."""
        assert self.dialogs == []
        assert self.page.evaluate("window.__pwned") is None
        assert self.page.evaluate("window.__violations") == []
        assert self.errors == []


@pytest.fixture
def tab(browser: Any) -> Iterator[Page]:
    page = Page(browser)
    try:
        yield page
    finally:
        page.context.close()


def seqs(page: Any) -> list[int]:
    return [int(s) for s in page.locator("table.entries tbody tr").evaluate_all(
        "rows => rows.map(r => r.getAttribute('data-seq'))")]


def by_seq(path: Path) -> dict[int, dict[str, Any]]:
    with SovereignJournal(path, create=False) as journal:
        return {e.seq: e.to_dict() for e in journal.query() if e.seq is not None}


def test_the_trail_filters_and_pages_as_krepis_logs_does(tab: Page, console: Served,
                                                         store: tuple[Path, Signer]) -> None:
    page = tab.open(console.url)
    assert len(seqs(page)) == 100 and page.locator("#trail-status").inner_text().startswith("100 entries")
    page.fill("input[name=op]", "op_c*")
    page.check("input[name=status][value=Failed]")
    page.check("input[name=status][value=Completed]")
    page.select_option("select[name=limit]", "50")
    page.click("form.filters button[type=submit]")
    page.wait_for_url(re.compile(r"op=op_c"))
    shown: list[int] = []
    for _ in range(50):
        page.wait_for_selector("#trail-status")
        shown += seqs(page)
        older = page.locator("a[rel=next]")
        if older.count() == 0:
            break
        older.click()
        page.wait_for_url(re.compile(r"after="))
    proc = krepis("--storage", str(store[0]), "logs", "--json", "-n", "all", "--op", "op_c*", "--status",
                  "failed", "--status", "completed", cwd=store[0].parent)
    entries = by_seq(store[0])
    printed = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [entry.pop("seq") for entry in printed] == shown
    assert [entries[s] for s in shown] == printed
    assert min(shown) < ARCHIVED  # the pages went on into the archived entries
    tab.clean()


def test_live_mode_shows_a_new_entry_within_a_second(tab: Page, console: Served,
                                                     store: tuple[Path, Signer]) -> None:
    page = tab.open(console.url)
    page.click("#live-toggle")
    page.wait_for_selector("text=live: new entries appear at the top")
    with SovereignJournal(store[0]) as journal:
        journal.log_transaction(TransactionLog.now("live_op", "live-req", LogStatus.Completed,
                                                   duration_us=42))
        written = time.monotonic()
        seq = journal.next_seq() - 1
    page.locator(f"tr[data-seq='{seq}']").wait_for(timeout=5000)
    assert time.monotonic() - written < 1.0
    row = page.locator("table.entries tbody tr").first
    assert row.get_attribute("data-seq") == str(seq) and "live_op" in row.inner_text()
    assert "live=1" in page.url
    tab.clean()


def test_a_request_page_is_its_timeline(tab: Page, console: Served) -> None:
    page = tab.open(console.url + "?request_id=req-0010")
    page.locator("a.rid").first.click()
    page.wait_for_url(re.compile(r"/request\?id=req-0010"))
    page.wait_for_selector("svg.timeline")
    assert page.locator("ol.timeline-list li").count() == 2
    assert page.locator("svg.timeline .span-bar").count() == 1  # the Completed entry's duration
    text = page.inner_text("main")  # request 10 failed (one in seven does)
    assert "1 Started, 1 Failed" in text and "TimeoutError: upstream 10 did not answer" in text
    tab.clean()


def test_the_plots_count_what_the_journal_holds(tab: Page, console: Served,
                                               store: tuple[Path, Signer]) -> None:
    since, until = T0 + 1_800_000, T0 + 9_000_000
    page = tab.open(console.url + f"ops?since={since}&until={until}&bucket=15min")
    page.wait_for_selector("#plot-counts")
    with SovereignJournal(store[0], create=False) as journal:
        window = journal.query(since=since, until=until)
        summary = journal.summary(since=since, until=until)
    bars = page.locator("#plot-counts rect.bar-entries").evaluate_all(
        "rs => rs.map(r => [+r.dataset.t, +r.dataset.entries, +r.dataset.failed])")
    expected: dict[int, list[int]] = {}
    for e in window:
        point = expected.setdefault(e.timestamp - e.timestamp % 900_000, [0, 0])
        point[0] += 1
        point[1] += e.status is LogStatus.Failed
    assert {t: [n, f] for t, n, f in bars} == expected
    assert page.locator("#plot-durations polyline").count() == 3
    rows = page.locator("#ops-table tbody tr").count()
    assert rows == len(summary.rows) + 1  # and the total
    assert page.locator("#ops-table tbody tr", has_text="op_refund").locator("td").first.inner_text() == \
        str(next(r.entries for r in summary.rows if r.op_name == "op_refund"))
    tab.clean()


def test_a_busy_answer_is_retried_as_the_server_asks(tab: Page, console: Served) -> None:
    """The console runs few heavy reads at once and answers another 503 with Retry-After: the
    page waits and asks again instead of failing."""
    busy: list[str] = []

    def once_busy(route: Any) -> None:
        if not busy:
            busy.append(route.request.url)
            route.fulfill(status=503, headers={"Retry-After": "1", "Content-Type": "application/json"},
                          body=json.dumps({"error": "busy"}))
        else:
            route.continue_()

    tab.page.route("**/api/summary?**", once_busy)
    page = tab.open(console.url + "ops")
    assert busy and page.locator("#ops-table tbody tr").count() > 1
    tab.clean()


def test_the_counters_page_shows_the_kernels_stats(tab: Page, console: Served) -> None:
    page = tab.open(console.url + "counters")
    assert page.inner_text("#kernel-js-ops-called .value") == "3"
    assert page.inner_text("#kernel-contexts-created .value") == "1"
    assert page.locator("#counters-table tbody tr").count() >= 6
    tab.clean()


def pin(page: Any, key: Signer) -> None:
    page.fill("#vkey", str(key.verifier()))
    page.click("#key-form button[type=submit]")
    page.wait_for_selector("#log-check .verdict")


def test_verify_in_the_browser_on_an_honest_server(tab: Page, console: Served,
                                                   store: tuple[Path, Signer]) -> None:
    page = tab.open(console.url + "verify")
    pin(page, store[1])
    assert page.inner_text("#log-check .verdict").startswith("✓")
    for seq in (5, ARCHIVED + 3):  # archived and live
        page.goto(console.url + f"verify?seq={seq}")
        page.wait_for_selector("#entry-check .verdict")
        assert page.inner_text("#entry-check .verdict").startswith(f"✓ entry #{seq} is leaf {seq}")
    tab.clean()


@pytest.mark.parametrize("altered", ["leaf", "proof/inclusion", "checkpoint"])
def test_verify_says_which_part_was_altered_in_transit(tab: Page, console: Served, store: tuple[Path, Signer],
                                                       altered: str) -> None:
    page = tab.open(console.url + "verify")
    pin(page, store[1])

    def tamper(route: Any) -> None:
        response = route.fetch()
        body = response.body()
        if altered == "leaf":
            body = body.replace(b"req-", b"REQ-", 1)
        elif altered == "proof/inclusion":
            proof = json.loads(body)
            proof["path"][1] = proof["path"][0]
            body = json.dumps(proof).encode()
        else:  # another root in the signed text: the signature no longer matches
            lines = body.decode().split("\n")
            lines[2] = "A" * 43 + "="
            body = "\n".join(lines).encode()
        route.fulfill(response=response, body=body)

    page.route(f"**/api/{altered}?**", tamper)
    page.route(f"**/api/{altered}", tamper)
    page.goto(console.url + "verify?seq=42")
    page.wait_for_selector("#entry-check .verdict")
    verdict = page.inner_text("#entry-check .verdict")
    assert verdict.startswith("✗"), verdict
    reason = {"leaf": "does not lead to the checkpoint's root", "proof/inclusion": "does not lead",
              "checkpoint": "signature of example.com/journal does not verify"}[altered]
    assert reason in verdict
    tab.clean()


def test_a_rewritten_history_is_caught_on_the_next_visit(browser: Any, console: Served,
                                                         store: tuple[Path, Signer], tmp_path: Path) -> None:
    """Same origin, same browser storage, same key: the second visit meets another history."""
    from krepis.web import create_app

    other = tmp_path / "other"
    rewritten = console_entries(ENTRIES + 50)
    rewritten[10] = TransactionLog(rewritten[10].timestamp, "op_charge", "req-0005", LogStatus.Completed)
    make_console_store(other, key=store[1], entries=rewritten, archive=False)
    tab = Page(browser)
    try:
        page = tab.open(console.url + "verify")
        pin(page, store[1])
        assert page.inner_text("#log-check .verdict").startswith("✓")
        with served(create_app(other)) as forger:
            page.route("**/api/**", lambda route: route.fulfill(
                response=route.fetch(url=route.request.url.replace(console.url, forger.url))))
            page.goto(console.url + "verify")
            page.wait_for_selector("#log-check .verdict")
            verdict = page.inner_text("#log-check .verdict")
            assert verdict.startswith("✗ split view") and "history was rewritten" in verdict
            assert page.locator("#log-check pre").count() == 2  # both signed notes, as evidence
            page.goto(console.url)
            page.wait_for_selector("#log-status a")
            assert "log check failed" in page.inner_text("#log-status")
        tab.clean()
    finally:
        tab.context.close()


def _forged(browser: Any, store: tuple[Path, Signer], tmp_path: Path) -> Any:
    """A store signed with the same key holding another history (more entries, entry 7 changed)."""
    other = tmp_path / "other"
    rewritten = console_entries(ENTRIES + 30)
    rewritten[7] = TransactionLog(rewritten[7].timestamp, "FORGED_op", "forged-7", LogStatus.Completed)
    make_console_store(other, key=store[1], entries=rewritten, archive=False)
    return other


def test_an_entry_is_verified_against_the_checkpoint_checked_above_only(browser: Any, console: Served,
                                                                       store: tuple[Path, Signer],
                                                                       tmp_path: Path) -> None:
    """The server answers the page's first checkpoint request honestly and every later one — and
    the entry and its proof — from a fork signed with the same key: the page never fetches the
    checkpoint again for the entry, so the fork's proof leads nowhere."""
    from krepis.web import create_app

    other = _forged(browser, store, tmp_path)
    tab = Page(browser)
    try:
        page = tab.open(console.url + "verify")
        pin(page, store[1])
        with served(create_app(other)) as forger:
            asked: list[str] = []

            def fork(route: Any) -> None:
                url = route.request.url
                if "/api/checkpoint" in url:
                    asked.append(url)
                    if len(asked) == 1:
                        route.continue_()
                        return
                route.fulfill(response=route.fetch(url=url.replace(console.url, forger.url)))

            page.route("**/api/checkpoint", fork)
            page.route("**/api/leaf?**", fork)
            page.route("**/api/proof/inclusion?**", fork)
            page.goto(console.url + "verify?seq=7")
            page.wait_for_selector("#entry-check .verdict")
            assert page.inner_text("#log-check .verdict").startswith("✓")
            verdict = page.inner_text("#entry-check .verdict")
            assert verdict.startswith("✗") and "does not lead to the checkpoint's root" in verdict, verdict
            assert len(asked) == 1  # one checkpoint per visit: the one the log check verified
            assert "FORGED_op" not in page.inner_text("#entry-check")
        tab.clean()
    finally:
        tab.context.close()


def test_no_entry_is_verified_while_the_log_check_fails(browser: Any, console: Served,
                                                        store: tuple[Path, Signer], tmp_path: Path) -> None:
    from krepis.web import create_app

    other = _forged(browser, store, tmp_path)
    tab = Page(browser)
    try:
        page = tab.open(console.url + "verify")
        pin(page, store[1])
        with served(create_app(other)) as forger:
            page.route("**/api/**", lambda route: route.fulfill(
                response=route.fetch(url=route.request.url.replace(console.url, forger.url))))
            page.goto(console.url + "verify?seq=7")
            page.wait_for_selector("#entry-check .verdict")
            assert page.inner_text("#log-check .verdict").startswith("✗ split view")
            verdict = page.inner_text("#entry-check .verdict")
            assert verdict.startswith("✗ no entry can be verified: the log's checkpoint is not trusted in "
                                      "this browser (split view"), verdict
            assert "FORGED_op" not in page.inner_text("#entry-check")
        tab.clean()
    finally:
        tab.context.close()


def test_a_proof_of_another_leaf_is_not_taken_for_the_entry(tab: Page, console: Served,
                                                            store: tuple[Path, Signer]) -> None:
    page = tab.open(console.url + "verify")
    pin(page, store[1])

    def other_leaf(route: Any) -> None:  # entry 3's bytes and proof, given for entry 5
        route.fulfill(response=route.fetch(url=route.request.url.replace("seq=5", "seq=3")))

    page.route("**/api/leaf?**", other_leaf)
    page.route("**/api/proof/inclusion?**", other_leaf)
    page.goto(console.url + "verify?seq=5")
    page.wait_for_selector("#entry-check .verdict")
    verdict = page.inner_text("#entry-check .verdict")
    assert verdict == ("✗ the server's proof is not for entry #5, which is leaf 5 of this log (its entries "
                       "begin at seq 0)"), verdict
    tab.clean()


def test_a_log_renumbered_between_visits_is_a_split_view(tab: Page, console: Served,
                                                         store: tuple[Path, Signer]) -> None:
    page = tab.open(console.url + "verify")
    pin(page, store[1])  # the first visit keeps the checkpoint and where the log's entries begin

    def renumbered(route: Any) -> None:
        response = route.fetch()
        counters = json.loads(response.body())
        counters["tree"]["first_seq"] += 2
        route.fulfill(response=response, body=json.dumps(counters).encode())

    page.route("**/api/counters", renumbered)
    page.goto(console.url + "verify?seq=5")
    page.wait_for_selector("#entry-check .verdict")
    assert page.inner_text("#log-check .verdict") == (
        "✗ split view: the server now numbers this log's entries from seq 2; this browser saw them numbered "
        "from seq 0")
    assert page.inner_text("#entry-check .verdict").startswith("✗ no entry can be verified")
    tab.clean()


def test_journal_texts_are_isolated_from_the_text_around_them(tab: Page, console: Served) -> None:
    """An unterminated right-to-left override in a journal text cannot reverse what follows it,
    and a link for an op whose name holds a glob's characters matches that name only."""
    page = tab.open(console.url)
    isolation = page.evaluate(
        "() => [...document.querySelectorAll('td.op, a.rid, .error-text, main strong')].slice(0, 20)"
        ".map(e => getComputedStyle(e).unicodeBidi)")
    assert isolation and set(isolation) == {"isolate"}
    exact = page.evaluate("async () => (await import(document.querySelector('script[type=module]').src))"
                          ".exactOp('a[1]*?b')")
    assert exact == "a[[]1][*][?]b"
    assert fnmatch.fnmatchcase("a[1]*?b", exact) and not fnmatch.fnmatchcase("a1xyb", exact)
    tab.clean()


def test_hostile_journal_texts_stay_text(tab: Page, console: Served, store: tuple[Path, Signer]) -> None:
    with SovereignJournal(store[0], create=False) as journal:
        hostile = journal.query(request_id=HOSTILE_RID, limit=1)[0]
    page = tab.open(console.url + "?q=onerror&limit=500")
    page.locator("td.op", has_text=HOSTILE_OP).first.wait_for()  # (the rows come after the heading)
    assert page.locator("td.op", has_text=HOSTILE_OP).count() > 0
    assert page.locator("a.rid", has_text=HOSTILE_RID).count() > 0
    assert page.locator(".error-text", has_text=HOSTILE_ERROR[:30]).count() > 0
    assert page.locator("main img, main script, main svg[onload]").count() == 0
    href = page.locator("a.rid", has_text=HOSTILE_RID).first.get_attribute("href")
    assert href is not None and href.startswith("/request?id=")
    for url in (f"request?id={HOSTILE_RID}", f"ops?op={HOSTILE_OP}", "counters", f"verify?seq={hostile.seq}"):
        page = tab.open(console.url + url)
    page.locator("#vkey").wait_for()
    tab.clean()


def test_the_keyboard_reaches_the_controls_and_links(tab: Page, console: Served) -> None:
    page = tab.open(console.url)
    reached: list[str] = []
    for _ in range(40):
        page.keyboard.press("Tab")
        reached.append(page.evaluate(
            "() => { const e = document.activeElement; return e.tagName + '.' + (e.className || '') + ':' +"
            " (e.getAttribute('name') || e.textContent.trim().slice(0, 20)) }"))
        if reached[-1].startswith("A.rid"):
            break
    joined = "\n".join(reached)
    assert reached[0].startswith("A.skip"), joined
    for wanted in ("A.:Ops", "INPUT.:op", "INPUT.:status", "INPUT.:since", "BUTTON.:Apply",
                   "BUTTON.secondary:Live"):
        assert wanted in joined, joined
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/request\?id="))
    page.wait_for_selector("main h1")
    tab.clean()


PAGES = ["", "ops?since=2026-01-31T12:00:00Z&until=2026-01-31T16:00:00Z", "counters", "verify?seq=650",
         "request?id=req-0301"]


@pytest.mark.parametrize("width", [1280, 390])
def test_every_page_fits_a_desktop_and_a_phone(browser: Any, console: Served, store: tuple[Path, Signer],
                                               width: int) -> None:
    shots = os.environ.get("KREPIS_WEB_SCREENSHOTS")
    tab = Page(browser, width)
    try:
        tab.page.goto(console.url + "verify")
        tab.page.evaluate("k => localStorage.setItem('krepis.vkey', k)", str(store[1].verifier()))
        for path in PAGES:
            page = tab.open(console.url + path)
            page.wait_for_load_state("networkidle")
            overflow = page.evaluate("document.scrollingElement.scrollWidth")
            assert overflow <= width + 1, (path, overflow)
            if shots:
                name = (path.split("?")[0] or "trail") + f"-{width}.png"
                page.screenshot(path=str(Path(shots) / name), clip={"x": 0, "y": 0, "width": width,
                                                                   "height": 900 if width > 400 else 844})
        tab.clean()
    finally:
        tab.context.close()
