"""The notebooks in a real browser, as a lecturer opens them: every notebook at its DEFAULT setting, cold, with the
class-room store prepared once (`lessons.build.prepare_store`) and training switched off on the server (so a
run that trained would fail). JupyterLab (headless, localhost, temporary token; the Voila apps are in test_browser_voila.py), driven by Playwright
in Debian's Chromium. Each notebook runs all its cells; no error output; plotly figures render; every prediction's
Reveal shows the answer only when pressed; a slider moves and its outcome figure changes. Screenshots of the key
figures go to test-artifacts/ (with the run and open times in timings.json). The class-room store is conftest's
`classroom`."""
import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import ARTIFACTS, ROOT, record_timing
from test_notebooks import FAST

# the first browser test waits for the class-room store (every lesson cold, about 6 minutes of one core; conftest)
pytestmark = pytest.mark.timeout(1800)

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
SLIDER_FIGURE = {"02_margins.ipynb": "Trained with lambda", "03_beta_moving_average.ipynb": "BMA model",
                 "04_fine_tuning.ipynb": "WiSE-FT at a ="}
# the figure each notebook is about (its screenshot is looked at before a release), by title start
KEY_FIGURES = {"01_world_and_zero_shot.ipynb": ["Zero-shot accuracy (%) per style and prompt set",
                                                "Zero-shot accuracy (%) per domain: class and domain"],
               "02_margins.ipynb": ["cos(t_i, t_j)", "Class-adaptive margins", "Accuracy (%) against lambda",
                                    "the chosen image: class probabilities"],
               "03_beta_moving_average.ipynb": ["BMA weights", "BMA: unseen domains / new", "BMA: train domains / base",
                                                "Accuracy over training"],
               "04_fine_tuning.ipynb": ["Training loss", "WiSE-FT: accuracy (%) against the mix"],
               "05_features_umap.ipynb": ["How far fine-tuning moved", "UMAP of what the classifier reads"],
               "06_ood_detection.ipynb": ["Semantic shift: AUROC", "Semantic shift: FPR95", "MCM AUROC (%) per model and shift",
                                          "OOD: "],
               "07_prompt_learning.ipynb": ["Accuracy (%) against shots", "Learned context vectors against every word",
                                            "How far each class's text feature moved", "OOD AUROC (%) per method and shots"]}
DROPDOWN_FIGURE = {"06_ood_detection.ipynb": ("OOD: ", "energy")}    # figure title start, option to pick


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _serving(command: list, cwd: Path, env: dict, log: Path, url: str, seconds: float = 120):
    """A local server (JupyterLab or Voila) started, awaited until `url` answers, and stopped afterwards."""
    server = subprocess.Popen(command, cwd=cwd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + seconds
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise RuntimeError(f"the server did not start: {log.read_text()[-2000:]}")
                time.sleep(0.5)
        yield server
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def _move_slider(page, scope, title_start: str) -> float:
    """Move the first slider in `scope` one step and wait until the figure titled `title_start` changes; returns
    the latency from the key press to the changed figure (s). A key press that reaches the page before the widget
    listens is lost (seen right after the page renders): the press is repeated, up to three times."""
    if _figure_state(page, title_start) is None:
        page.screenshot(path=str(ARTIFACTS / "missing_figure.png"), full_page=True)
        titles = page.evaluate("""() => [...document.querySelectorAll('.js-plotly-plot')].map(el =>
            el.layout && el.layout.title && (el.layout.title.text || el.layout.title))""")
        raise AssertionError(f"the interactive figure {title_start!r} did not render; the page has {titles}")
    stale, latency = _move_and_wait(page, scope.locator(".widget-slider").first, [title_start], attempts=3)
    assert not stale, f"a slider move did not reach {stale}"
    return latency


def _serving_env(folder: Path, cache: Path) -> dict:
    return dict(os.environ, JUPYTER_CONFIG_DIR=str(folder / ".jupyter-config"), JUPYTER_RUNTIME_DIR=str(folder / ".rt"),
                CLIPOOD_KIT_CACHE=str(cache), CLIPOOD_KIT_NO_TRAINING="1")


@pytest.fixture(scope="module")
def lab(tmp_path_factory, classroom):
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed: apt-get install chromium (make test installs it)"
    folder = tmp_path_factory.mktemp("lab")
    for name in FAST:
        shutil.copyfile(ROOT / "notebooks" / name, folder / name)
    # render every cell (no windowing), so each cell's prompt can be read after Run All
    settings = folder / ".lab-settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    news = folder / ".lab-settings" / "@jupyterlab" / "apputils-extension"     # no "news?" pop-up over the figures
    news.mkdir(parents=True)
    (news / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
    port, token = _free_port(), secrets.token_hex(16)
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
               f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={folder}", "--ServerApp.open_browser=False",
               "--allow-root", f"--LabApp.user_settings_dir={folder / '.lab-settings'}", "--LabApp.news_url=",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    with _serving(command, folder, _serving_env(folder, classroom), folder / "jupyterlab.log",
                  f"http://127.0.0.1:{port}/api/status?token={token}"):
        from playwright.sync_api import sync_playwright
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            try:
                yield browser, f"http://127.0.0.1:{port}", token, folder
            finally:
                browser.close()


def _scroll_through(page, panel) -> None:
    """Every output of the notebook scrolled into view once, top to bottom, and every figure hovered, as a reader
    does: JupyterLab's plotly renderer keeps a PNG of each figure in the output and shows it until the mouse enters
    it (jupyterlab-plotly `RenderedPlotly.renderModel`), then draws the live figure."""
    outputs = panel.locator(".jp-OutputArea-output")
    for i in range(outputs.count()):
        outputs.nth(i).scroll_into_view_if_needed()
    panel.evaluate("""(el) => el.querySelectorAll('img.plot-img').forEach(
        img => img.dispatchEvent(new MouseEvent('mouseenter')))""")
    page.wait_for_timeout(1500)


# the title, the traces' data and the shapes (a slider's marker line) of the first figure whose title starts with
# `start`, as one string (null if none is drawn): what a control must change
FIGURE_STATE_JS = """(start) => {
    for (const el of document.querySelectorAll('.js-plotly-plot')) {
        const t = el.layout && el.layout.title && (el.layout.title.text || el.layout.title);
        if (typeof t === 'string' && t.startsWith(start))
            return JSON.stringify([t, el.data.map(d => [d.x, d.y, d.z]),
                                   (el.layout.shapes || []).map(sh => [sh.x0, sh.x1, sh.y0, sh.y1])]);
    }
    return null; }"""


def _figure_state(page, title_start: str):
    """`FIGURE_STATE_JS` of the figure whose title starts with `title_start` (None if not rendered)."""
    return page.evaluate(FIGURE_STATE_JS, title_start)


def _shoot_figure(page, panel, title_start: str, path: Path) -> None:
    """A screenshot of the figure whose title starts with `title_start` (the outcome a control reaches)."""
    index = page.evaluate("""(start) => {
        const plots = [...document.querySelectorAll('.js-plotly-plot')];
        return plots.findIndex(el => { const t = el.layout && el.layout.title && (el.layout.title.text || el.layout.title);
                                       return typeof t === 'string' && t.startsWith(start); }); }""", title_start)
    plot = panel.locator(".js-plotly-plot").nth(index)
    plot.scroll_into_view_if_needed()
    page.wait_for_timeout(500)
    plot.screenshot(path=str(path))


@pytest.mark.parametrize("name", sorted(FAST))
def test_notebook_in_jupyterlab(lab, classroom_lesson, name):
    browser, base, token, folder = lab
    classroom_lesson(name)
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1600})      # tall enough for the 3-panel UMAP
    try:
        # a workspace of its own, so no other notebook is restored beside this one
        opened = time.perf_counter()
        page.goto(f"{base}/lab/workspaces/{Path(name).stem}/tree/{name}?reset&token={token}")
        panel = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
        panel.locator(".jp-Cell").first.wait_for(timeout=60_000)
        page.locator(".jp-StatusBar-TextItem", has_text="Idle").first.wait_for(timeout=90_000)   # kernel ready
        page.wait_for_timeout(2000)
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
        started = time.perf_counter()
        deadline = time.time() + 240
        while True:
            prompts = panel.locator(".jp-CodeCell .jp-InputPrompt").all_inner_texts()
            done = prompts and all(p.strip() not in ("[*]:", "[ ]:", "") for p in prompts)
            if done:
                record_timing("run all in JupyterLab with the store (s)", {name: round(time.perf_counter() - started, 1)})
                record_timing("open cold, kernel start to every cell run, in JupyterLab with the store (s)",
                        {name: round(time.perf_counter() - opened - 2.0, 1)})    # less the 2 s settle wait
                break
            assert time.time() < deadline, f"{name}: cells still running: {prompts}"
            page.wait_for_timeout(1000)
        page.wait_for_timeout(1500)
        _scroll_through(page, panel)
        outputs = " ".join(panel.locator(".jp-OutputArea-output").all_inner_texts())
        assert "Traceback" not in outputs and "Error:" not in outputs, outputs[-2000:]
        assert panel.locator(".js-plotly-plot").count() > 0, f"{name}: no plotly figure rendered"
        if name in SLIDER_FIGURE:
            latency = _move_slider(page, panel, SLIDER_FIGURE[name])
            record_timing("slider latency in JupyterLab (s)", {name: round(latency, 3)})
            assert latency < 10, f"{name}: a slider move took {latency:.1f} s to reach its figure"
            _shoot_figure(page, panel, SLIDER_FIGURE[name], ARTIFACTS / f"{Path(name).stem}_outcome.png")
        if name in DROPDOWN_FIGURE:
            start, option = DROPDOWN_FIGURE[name]
            before = _figure_state(page, start)
            assert before is not None, f"{name}: the interactive figure did not render"
            select = panel.locator(".widget-dropdown select").nth(1)
            select.scroll_into_view_if_needed()
            select.select_option(option)
            page.wait_for_function("""([start, option]) => {
                for (const el of document.querySelectorAll('.js-plotly-plot')) {
                    const t = el.layout && el.layout.title && (el.layout.title.text || el.layout.title);
                    if (typeof t === 'string' && t.startsWith(start)) return t.includes(option);
                }
                return false; }""", arg=[start, option], timeout=30_000)
            assert _figure_state(page, start) != before
        for i, title in enumerate(KEY_FIGURES[name]):
            assert _figure_state(page, title) is not None, f"{name}: the figure {title!r} did not render"
            _shoot_figure(page, panel, title, ARTIFACTS / f"{Path(name).stem}_key{i}.png")
        page.screenshot(path=str(ARTIFACTS / f"{Path(name).stem}.png"), full_page=True)
        _answer_and_reveal(page, panel, name)
        # saved as a student saves it (what 30 students hand in): it must stay small
        saved = folder / name
        unsaved = saved.stat().st_mtime
        panel.locator(".jp-Notebook").first.click(position={"x": 5, "y": 5})
        page.keyboard.press("Control+s")
        deadline = time.time() + 30
        while saved.stat().st_mtime == unsaved and time.time() < deadline:
            page.wait_for_timeout(500)
        assert saved.stat().st_mtime != unsaved, f"{name}: the notebook was not saved"
        size = saved.stat().st_size / 1e6
        record_timing("executed and saved in JupyterLab (MB)", {name: round(size, 2)})
        assert size < 2, f"{name}: the executed notebook is {size:.1f} MB (a class hands in 30 of them)"
    finally:
        page.close()


def _answer_and_reveal(page, scope, name: str, shots: str = "") -> None:
    """Every prediction of the page: no reveal shown before its button is pressed; pressed unanswered, it asks for
    an answer; answered (the first choice, or 0.5), it sets the answer beside the run's. With `shots` (a file
    name start), screenshots of the first reveal before and after its press."""
    text = scope.inner_text()
    assert "The run says" not in text and "You predicted" not in text, f"{name}: a reveal shows before its button"
    buttons = scope.locator("button", has_text="Reveal")
    count = buttons.count()
    assert count >= 1, f"{name}: no Reveal button"
    box = buttons.first.locator("xpath=..")                  # the VBox of the button and its output
    if shots:
        box.scroll_into_view_if_needed()
        box.screenshot(path=str(ARTIFACTS / f"{shots}_reveal_before.png"))
    buttons.first.scroll_into_view_if_needed()
    buttons.first.click()
    scope.get_by_text("Answer the question above first").first.wait_for(timeout=15_000)
    radios, boxes = scope.locator(".widget-radio-box"), scope.locator(".widget-text input")
    assert radios.count() + boxes.count() == count, f"{name}: {count} Reveal buttons for " \
        f"{radios.count() + boxes.count()} questions"
    for i in range(radios.count()):
        radios.nth(i).locator("input").first.check()
    for i in range(boxes.count()):
        boxes.nth(i).fill("0.5")
        boxes.nth(i).press("Enter")
    for i in range(count):
        buttons.nth(i).scroll_into_view_if_needed()
        buttons.nth(i).click()
    page.wait_for_function("(n) => (document.body.innerText.match(/The run says/g) || []).length >= n", arg=count,
                           timeout=30_000)
    if shots:
        box.scroll_into_view_if_needed()
        page.wait_for_timeout(300)
        box.screenshot(path=str(ARTIFACTS / f"{shots}_reveal_after.png"))


def _control(page, description: str):
    """The slider or dropdown whose description is `description`."""
    import re
    label = page.locator(".widget-label", has_text=re.compile(f"^{re.escape(description)}$"))
    return page.locator(".widget-slider, .widget-dropdown", has=label).first


def _move(page, control) -> float:
    """One step of a control: a slider's handle one position (right, or left at its end), a dropdown's next
    option (wrapping). Returns the time of the key press or the selection (`time.perf_counter`)."""
    select = control.locator("select")
    if select.count():
        options = select.locator("option").all_inner_texts()
        now = select.evaluate("el => el.selectedIndex")
        pressed = time.perf_counter()
        select.select_option(index=(now + 1) % len(options))
        return pressed
    handle = control.locator(".noUi-handle").first
    now, top = (float(handle.get_attribute(a)) for a in ("aria-valuenow", "aria-valuemax"))
    handle.scroll_into_view_if_needed()
    handle.focus()
    pressed = time.perf_counter()
    page.keyboard.press("ArrowLeft" if now >= top else "ArrowRight")
    return pressed


def _move_and_wait(page, control, titles, attempts: int = 1):
    """One step of `control` (`_move`), then `_wait_changed` on every figure of `titles`; a step that changed none
    of them is pressed again, up to `attempts` presses in all (a press lost before the widget listened). Returns
    the figures still stale (none when the move reached every one) and the latency of the last press (s)."""
    before = {t: _figure_state(page, t) for t in titles}
    assert all(before.values()), f"a figure of {titles} did not render"
    for _ in range(attempts):
        pressed = _move(page, control)
        stale = _wait_changed(page, titles, before)
        if not stale:
            break
    return stale, time.perf_counter() - pressed


def _wait_changed(page, titles, before: dict, seconds: float = 15):
    """Until every figure of `titles` is drawn and differs from `before` (its state before the move), polled in the
    page on every frame; the stale ones (unchanged or gone) on timeout."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    try:
        page.wait_for_function(f"([titles, before]) => titles.every(t => {{ const s = ({FIGURE_STATE_JS})(t); "
                               f"return s !== null && s !== before[t]; }})", arg=[list(titles), before],
                               timeout=seconds * 1000)
        return []
    except PlaywrightTimeout:
        return [t for t in titles if _figure_state(page, t) in (None, before[t])]
