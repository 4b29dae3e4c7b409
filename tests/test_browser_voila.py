"""The lessons' app versions served by Voila (`lessons.build.APP_LESSONS`, no code shown), driven by Playwright in
Debian's Chromium, from the class-room store of every notebook's DEFAULT setting with training switched off on the
server (conftest `classroom`): every control (slider or dropdown) is moved to three values and every figure it
drives is checked after each move, on CLIPOOD_KIT_VOILA_LOADS page loads per app. A file of its own beside
test_browser.py (JupyterLab), so the two can run on two workers at once. Screenshots go to test-artifacts/."""
import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from conftest import ARTIFACTS, record_timing
from test_browser import (CHROMIUM_ARGS, ROOT, _answer_and_reveal, _control, _figure_state, _free_port,
                          _move_and_wait, _serving, _serving_env)

pytestmark = pytest.mark.timeout(1800)


@pytest.fixture(scope="module")
def chromium():
    path = shutil.which("chromium")
    assert path, "Debian's chromium is needed: apt-get install chromium (make test installs it)"
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


# Voila used to drop figure updates: plotly's FigureWidget keeps its synced state at display time and sends every edit
# as a one-shot message, and in about a third of page loads a view took none of them (measured 2026-12-06: 2 to 5
# stale loads of 5 to 8 for notebook 4's WiSE-FT bars; the loss figure empty in every load). The lessons now draw
# their edited figures as `viz.widgets.LiveFigure` (an Output widget whose state is the whole figure). Each app is
# loaded VOILA_LOADS times here (CLIPOOD_KIT_VOILA_LOADS=20 is the soak the closing notes report).
VOILA_LOADS = int(os.environ.get("CLIPOOD_KIT_VOILA_LOADS", "2"))
# Extra options for the served apps (a soak can try other serving modes). The "model not found" race of busy cores
# (jupyter-widgets/ipywidgets#4026) is cured by the apps' own template (lessons/voila_template), which each load checks.
VOILA_OPTIONS = os.environ.get("CLIPOOD_KIT_VOILA_OPTIONS", "").split()
VOILA_FINAL_TITLES = {"04_fine_tuning.ipynb": "Training loss (CE and MMS"}   # set after display: must reach the page
# every control of each app: (its description, the title starts of the figures it drives)
APP_CONTROLS = {
    "02_margins.ipynb": [("lambda", ["Class-adaptive margins", "Trained with lambda", "Accuracy (%) against lambda",
                                     "the chosen image: class probabilities"])],
    "03_beta_moving_average.ipynb": [("alpha", ["BMA weights", "BMA model"]), ("beta", ["BMA weights", "BMA model"])],
    "04_fine_tuning.ipynb": [("mix a", ["WiSE-FT at a =", "WiSE-FT: accuracy (%) against the mix"])],
    "06_ood_detection.ipynb": [("model", ["OOD: "]), ("score", ["OOD: "]), ("shift", ["OOD: "])],
}
MOVES = 3


def test_every_app_lesson_has_its_controls_listed():
    from clipood_kit.lessons.build import APP_LESSONS
    assert sorted(APP_CONTROLS) == sorted(APP_LESSONS)


@pytest.fixture(scope="module")
def apps(tmp_path_factory):
    from clipood_kit.lessons.build import app_versions
    folder = tmp_path_factory.mktemp("apps")
    app_versions(folder, ROOT / "notebooks")
    return folder


@pytest.mark.parametrize("name", sorted(APP_CONTROLS))
def test_lesson_as_a_voila_app(chromium, classroom, classroom_lesson, apps, name):
    """The app version served by Voila (the README's command): it renders from the class-room store, shows no
    reveal before its button, and every control reaches every figure it drives, on every load."""
    browser = chromium
    classroom_lesson(name)
    port = _free_port()
    command = [sys.executable, "-m", "voila", name, f"--port={port}", "--no-browser", "--Voila.ip=127.0.0.1",
               "--theme=light", *VOILA_OPTIONS]
    with _serving(command, apps, _serving_env(apps, classroom), apps / f"voila-{name}.log",
                  f"http://127.0.0.1:{port}/"):
        for load in range(VOILA_LOADS):
            _voila_load(browser, port, name, load)


def _trace_kernel_socket(ws, log: list) -> None:
    """Append one line per kernel message on `ws` (Jupyter's v1 websocket protocol: offsets, then channel, header,
    parent header, metadata, content) to `log`: time, direction, channel, type, and the widget message's method."""
    def record(direction, payload):
        if isinstance(payload, str):
            log.append(f"{time.perf_counter():.2f} {direction} text {payload[:200]}")
            return
        count = int.from_bytes(payload[:8], "little")
        offsets = [int.from_bytes(payload[8 * (i + 1):8 * (i + 2)], "little") for i in range(count)]
        parts = [payload[offsets[i]:offsets[i + 1]] for i in range(min(count - 1, 5))]
        header, content = json.loads(parts[1] or b"{}"), json.loads(parts[4] or b"{}")
        data = content.get("data", {}) if isinstance(content, dict) else {}
        what = [header.get("msg_type"), content.get("comm_id", "")[:8], content.get("target_name", ""),
                str(data.get("method", "")), ",".join(k[:8] for k in data.get("states", {})) if "states" in data else "",
                ",".join(k[:8] for k in content.get("comms", {})) if "comms" in content else ""]
        log.append(f"{time.perf_counter():.2f} {direction} {parts[0].decode()} " + " ".join(w for w in what if w))
    ws.on("framesent", lambda p: record("->", p))
    ws.on("framereceived", lambda p: record("<-", p))


def _voila_load(browser, port: int, name: str, load: int) -> None:
    """One page load of a lesson app: no code, no traceback, no reveal before its button, the figures drawn, and
    every control moved MOVES times with every figure it drives checked after each move."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    stem = Path(name).stem
    console = []      # the page's warnings and errors, written beside the screenshots when a load fails
    page.on("console", lambda m: console.append(f"{time.perf_counter():.2f} {m.type}: {m.text}")
            if m.type in ("error", "warning") else None)
    if os.environ.get("CLIPOOD_KIT_VOILA_TRACE"):     # the kernel messages too (diagnosing a failed load)
        page.on("websocket", lambda ws: _trace_kernel_socket(ws, console))
        page.add_init_script("""document.addEventListener('DOMContentLoaded', () => { window.__shown = [...document
            .querySelectorAll('script[type="application/vnd.voila.cell-output+json"]')].map(s => JSON.parse(s.innerHTML))
            .map(o => o.data && o.data['application/vnd.jupyter.widget-view+json'])
            .filter(Boolean).map(w => w.model_id.slice(0, 8)); });""")
    try:
        started = time.perf_counter()
        page.goto(f"http://127.0.0.1:{port}/", timeout=180_000)
        first = APP_CONTROLS[name][0][1][0]
        page.wait_for_function("""(start) => [...document.querySelectorAll('.js-plotly-plot')].some(el => {
            const t = el.layout && el.layout.title && (el.layout.title.text || el.layout.title);
            return typeof t === 'string' && t.startsWith(start); })""", arg=first, timeout=180_000)
        record_timing("Voila: first figure (s)", {f"{name} (load {load})": round(time.perf_counter() - started, 1)})
        assert page.evaluate("() => window.jupyterapp.widgetManager.__clipoodWaitsForModels === true"), (
            "Voila did not serve the app with clipood-kit's template (its views wait for their model)")
        page.wait_for_timeout(2000)
        text = page.locator("body").inner_text()
        assert "Traceback" not in text and "Error" not in text, text[-2000:]
        assert "import " not in text, "Voila shows code"
        assert "BEGIN QUESTION" not in text and "ASSIGNMENT CONFIG" not in text, "Voila shows otter's markup"
        assert "Implement." not in text, "the app shows an implement-and-check exercise"
        assert "The run says" not in text and "You predicted" not in text, f"{name}: a reveal shows before its button"
        if load == 0:
            page.screenshot(path=str(ARTIFACTS / f"voila_{stem}_before_reveal.png"), full_page=True)
        if name in VOILA_FINAL_TITLES:
            assert _figure_state(page, VOILA_FINAL_TITLES[name]) is not None, \
                f"{name}, load {load}: an edit made after the figure was displayed did not reach the page"
        latencies = []
        for description, titles in APP_CONTROLS[name]:
            control = _control(page, description)
            control.wait_for(timeout=30_000)
            for move in range(MOVES):
                # only a first press may be lost before the widget listens: a later one is never pressed again,
                # so a dropped update fails the test
                stale, latency = _move_and_wait(page, control, titles, attempts=2 if move == 0 else 1)
                if stale:
                    page.screenshot(path=str(ARTIFACTS / f"voila_{stem}_load{load}_stale.png"), full_page=True)
                assert not stale, f"{name}, load {load}: {description} move {move + 1} did not reach {stale}"
                latencies.append(latency)
        record_timing("Voila: control latency, max over moves (s)", {f"{name} (load {load})": round(max(latencies), 3)})
        if load == 0:
            _answer_and_reveal(page, page.locator("body"), name, shots=f"voila_{stem}")
            page.screenshot(path=str(ARTIFACTS / f"voila_{stem}.png"), full_page=True)
    except BaseException:
        ARTIFACTS.mkdir(exist_ok=True)
        try:
            console.append("manager: " + json.dumps(page.evaluate("""() => { const m = window.jupyterapp.widgetManager;
                return {restored: m.restoredStatus, shown: window.__shown, models: Object.keys(m._models).map(k => k.slice(0, 8)).sort()}; }""")))
        except Exception as error:       # the page may be gone
            console.append(f"manager: unreadable ({error})")
        (ARTIFACTS / f"voila_{stem}_load{load}_console.txt").write_text("\n".join(console))
        raise
    finally:
        page.close()
