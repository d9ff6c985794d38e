"""report.html in a real headless browser (Debian's chromium, driven over the DevTools protocol on a
pipe): it renders without console errors, makes no network request at all, shows the forest plot
and tables, sorts and filters; a screenshot is kept in tests/artifacts/ (and $EDGEEVAL_ARTIFACTS)."""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import polars as pl
import pytest
from test_report import synthetic_run

from edgeeval.report import build_report

ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
REASON = "chromium is not installed (apt-get install chromium): the report.html browser tests did not run"
if CHROMIUM is None and not os.environ.get("CI"):
    pytest.skip(REASON, allow_module_level=True)  # the whole module at once: one line under -ra


@pytest.fixture(scope="module")
def chromium() -> str:
    if CHROMIUM is None:
        pytest.fail(REASON)  # CI installs it: a skip there would hide a broken set-up
    return CHROMIUM


class Browser:
    """A headless chromium and a minimal DevTools-protocol client over --remote-debugging-pipe
    (JSON messages separated by NUL bytes on file descriptors 3 and 4): no websocket needed."""

    def __init__(self, executable: str, profile: Path):
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def wire_pipes():  # in the child: the protocol expects the pipes on fds 3 and 4
            read_end, write_end = os.dup(to_browser_r), os.dup(from_browser_w)
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        self.process = subprocess.Popen(
            [executable, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check",
             "--disable-extensions", f"--user-data-dir={profile}", "--remote-debugging-pipe",
             # Belt and braces: even a request the test failed to see could not reach a host.
             "--host-resolver-rules=MAP * ~NOTFOUND", "about:blank"],
            preexec_fn=wire_pipes, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer, self._next_id, self.events = b"", 0, []

    def send(self, method: str, session: str | None = None, **params) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._receive()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, method: str, session: str | None = None, timeout: float = 60) -> dict:
        """The first event `method` (of `session`, when given), waiting for it if it has not come yet."""
        def found() -> dict | None:
            return next((e for e in self.events if e.get("method") == method
                         and (session is None or e.get("sessionId") == session)), None)

        deadline = time.monotonic() + timeout
        while (event := found()) is None:
            self.events.append(self._receive(deadline - time.monotonic()))
        return event

    def wait_until(self, predicate, timeout: float = 60) -> bool:
        """Take in events until predicate() holds (True) or `timeout` seconds pass (False)."""
        deadline = time.monotonic() + timeout
        while not predicate():
            try:
                self.events.append(self._receive(deadline - time.monotonic()))
            except TimeoutError:
                return predicate()
        return True

    def drain(self, seconds: float) -> None:
        """Collect whatever events arrive in the next few moments (late requests, late errors)."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                self.events.append(self._receive(deadline - time.monotonic()))
            except TimeoutError:
                return

    def _receive(self, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._from_browser], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError("no message from chromium")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise EOFError("chromium closed the DevTools pipe")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def close(self) -> None:
        try:
            self.send("Browser.close")
            self.process.wait(timeout=10)
        except (OSError, EOFError, TimeoutError, RuntimeError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


class Page:
    """One tab with the report loaded, and what happened while loading it."""

    def __init__(self, browser: Browser, path: Path, width: int = 1280, height: int = 900):
        self.browser = browser
        target = browser.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = browser.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        self.url = path.resolve().as_uri()
        self.call("Page.navigate", url=self.url)
        # This tab's load event (each tab of the browser has its own; an earlier tab's does not count).
        browser.wait_for("Page.loadEventFired", session=self.session)
        browser.drain(0.5)  # and whatever comes soon after (late requests, late errors)

    def call(self, method: str, **params) -> dict:
        return self.browser.send(method, session=self.session, **params)

    def js(self, expression: str):
        reply = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in reply:
            raise AssertionError(f"{expression}: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    def _events(self, method: str) -> list[dict]:
        return [e["params"] for e in self.browser.events if e.get("method") == method and e.get("sessionId") == self.session]

    def requests(self) -> list[str]:
        """Every request the page made, except loading the report file itself."""
        return [e["request"]["url"] for e in self._events("Network.requestWillBeSent") if e["request"]["url"] != self.url]

    def errors(self) -> list[str]:
        console = [" ".join(str(a.get("value", a.get("description"))) for a in e["args"])
                   for e in self._events("Runtime.consoleAPICalled") if e["type"] in ("error", "assert")]
        thrown = [e["exceptionDetails"].get("text", "") + " " + str(e["exceptionDetails"].get("exception", {}).get("description"))
                  for e in self._events("Runtime.exceptionThrown")]
        logged = [f"{e['entry']['source']}: {e['entry']['text']}" for e in self._events("Log.entryAdded")
                  if e["entry"]["level"] == "error"]
        dialogs = [f"dialog: {e['message']}" for e in self._events("Page.javascriptDialogOpening")]
        return console + thrown + logged + dialogs

    def screenshot(self, path: Path, height: int) -> None:
        width = self.js("document.documentElement.scrollWidth")
        shot = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                         clip={"x": 0, "y": 0, "width": width, "height": height, "scale": 1})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))


@pytest.fixture(scope="module")
def browser(chromium, tmp_path_factory):
    instance = Browser(chromium, tmp_path_factory.mktemp("chromium-profile"))
    yield instance
    instance.close()


@pytest.fixture(scope="module")
def report_html(tmp_path_factory) -> Path:
    run = synthetic_run(tmp_path_factory.mktemp("browser") / "run-a")
    build_report(run)
    return run / "report.html"


@pytest.fixture(scope="module")
def page(browser, report_html) -> Page:
    return Page(browser, report_html)


def test_report_renders_without_errors_or_network(page):
    assert page.errors() == []
    assert page.requests() == []
    assert page.js("document.title") == "edgeeval report"  # the hostile model answer did not run


def test_screenshot_is_kept_as_an_artifact(page):
    target = ARTIFACTS / "report.png"
    page.screenshot(target, height=2400)
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and target.stat().st_size > 20_000
    extra = os.environ.get("EDGEEVAL_ARTIFACTS")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(target, Path(extra) / "report.png")


def test_report_shows_forest_plot_tables_and_drill_down(page, report_html):
    comparison = pl.read_csv(report_html.with_name("comparison.csv"))
    metrics = set(pl.read_csv(report_html.with_name("results.csv"))["metric"])
    forest = page.js("""(() => { const svg = document.querySelector('#forest svg.forest');
        const box = svg.getBoundingClientRect();
        return {rows: svg.querySelectorAll('g.row').length, points: svg.querySelectorAll('circle.point').length,
                title: svg.querySelector('title').textContent, width: box.width, height: box.height}; })()""")
    assert forest["rows"] == forest["points"] == comparison.height > 10
    assert "paired difference with 95% CI" in forest["title"]
    assert forest["width"] > 600 and forest["height"] > 200
    tables = page.js("""Array.from(document.querySelectorAll('table.sortable')).map(t => t.tBodies[0].rows.length)""")
    assert len(tables) >= 6 and all(n > 0 for n in tables)
    headline = page.js("""Array.from(document.querySelectorAll('#comparison table tbody tr'))
        .map(r => r.cells[0].textContent + ' ' + r.cells[1].textContent + ' ' + r.cells[2].textContent)""")
    assert "mednli macro_f1 general better" in headline and "meqsum rougeL no significant difference" in headline
    assert len(headline) == comparison.height
    charts = page.js("Array.from(document.querySelectorAll('#models svg.bars')).map(s => s.id)")
    assert charts == [f"bars--{m}" for m in ("accuracy", "macro_f1", "rouge1", "rouge2", "rougeL",
                                            "hallucination_rate", "invalid_rate", "error_rate")]
    assert {m for m in metrics if m.startswith("confusion_")}, "the label task reports a confusion table"
    assert page.js("document.querySelectorAll('#tasks table.confusion').length") == 2
    examples = page.js("document.querySelectorAll('details.example').length")
    assert examples >= 20


def test_tables_sort_and_examples_filter(page):
    sort_by = """(() => { const table = document.querySelector('#comparison table');
        const th = Array.from(table.tHead.rows[0].cells).find(c => c.textContent.startsWith('delta'));
        th.querySelector('button').click();
        return Array.from(table.tBodies[0].rows).map(r => parseFloat(r.cells[th.cellIndex].dataset.v)); })()"""
    ascending = page.js(sort_by)
    assert ascending == sorted(ascending)
    assert page.js(sort_by) == sorted(ascending, reverse=True)
    shown = page.js("""(() => { const box = document.getElementById('drill-search');
        box.value = 'medn-0'; box.dispatchEvent(new Event('input'));
        return Array.from(document.querySelectorAll('details.example')).filter(d => !d.hidden).map(d => d.dataset.id); })()""")
    assert shown and all(i.startswith("medn-0") for i in shown)
    assert page.js("document.getElementById('drill-count').textContent") == f"{len(shown)} shown"
    page.js("(() => { const box = document.getElementById('drill-search'); box.value = ''; box.dispatchEvent(new Event('input')); })()")
    assert page.errors() == []


def test_the_checks_catch_an_external_reference(browser, report_html, tmp_path):
    """The network and console checks above must fail on a page that reaches out: prove it once."""
    html = report_html.read_text()
    leaky = tmp_path / "leaky.html"
    leaky.write_text(html.replace("</main>", '<img src="https://cdn.example.org/logo.png" alt=""></main>'))
    page = Page(browser, leaky)
    refused = lambda: any("cdn.example.org" in e or "Content Security Policy" in e for e in page.errors())  # noqa: E731
    browser.wait_until(refused)  # the report comes when it comes: on a busy machine after the load event
    assert page.requests() == ["https://cdn.example.org/logo.png"] or page.errors()
    assert refused()
    # Without the page's Content-Security-Policy the request itself goes out, and is counted.
    open_page = tmp_path / "open.html"
    open_page.write_text(leaky.read_text().replace("Content-Security-Policy", "X-Removed"))
    opened = Page(browser, open_page)
    browser.wait_until(lambda: "https://cdn.example.org/logo.png" in opened.requests())
    assert "https://cdn.example.org/logo.png" in opened.requests()


def test_the_option_order_section_draws_a_position_plot_per_permuted_arm(browser, tmp_path):
    """A run with --permute (fake engine, loglik): every (model, task) gets its plot of the answers at each position
    beside gold's, in a page that still loads nothing."""
    from cli_support import run_cli
    from conftest import make_project

    project = make_project(tmp_path)
    out = tmp_path / "permuted"
    assert run_cli(project, "run", "--pair", "test", "--task", "medqa", "--engine", "fake", "--quiet", "--mode", "loglik",
                   "--permute", "cyclic", "--models-dir", str(project.parent / "models"), "--out", str(out)) == 0
    page = Page(browser, out / "report.html")
    assert page.errors() == [] and page.requests() == []
    plots = page.js("""Array.from(document.querySelectorAll('#robustness svg.bars')).map(s => {
        const box = s.getBoundingClientRect();
        return {id: s.id, bars: s.querySelectorAll('g.bar rect').length, title: s.querySelector('title').textContent,
                width: box.width, height: box.height}; })""")
    assert all(p["id"].startswith("positions--") for p in plots) and len({p["id"] for p in plots}) == len(plots)
    assert len(plots) == 2 and all(p["bars"] == 10 for p in plots)  # five positions: answers and gold at each
    assert all("answers at each position" in p["title"] and p["width"] > 600 and p["height"] > 150 for p in plots)
    nav = page.js("Array.from(document.querySelectorAll('nav a')).map(a => a.textContent)")
    assert "Option order" in nav
    rows = page.js("document.querySelectorAll('#robustness table.sortable tbody tr').length")
    assert rows == 4  # two models in the chosen-letter table, two in the rotations table
