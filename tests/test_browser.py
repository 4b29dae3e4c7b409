"""The notebooks in a real browser: JupyterLab (headless, localhost, temporary token) driven by Playwright in
Debian's Chromium. Each notebook runs all its cells (fast parameters); no error output; plotly figures render;
in notebooks 2, 3 and 4 a slider moves and a figure of what it reaches (accuracy of trained models) changes; in notebook 6 a dropdown picks another score and the
figure changes. Screenshots go to test-artifacts/."""
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

from test_notebooks import FAST

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
SLIDER_FIGURE = {"02_margins.ipynb": "Trained with lambda", "03_beta_moving_average.ipynb": "Accuracy (%) and OOD AUROC",
                 "04_fine_tuning.ipynb": "WiSE-FT at a ="}
DROPDOWN_FIGURE = {"06_ood_detection.ipynb": ("OOD: ", "energy")}    # figure title start, option to pick


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fast_copy(name: str, folder: Path) -> None:
    """The notebook with its parameters cell set to the fast values."""
    nb = json.loads((ROOT / "notebooks" / name).read_text())
    for cell in nb["cells"]:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            lines = "".join(cell["source"]).splitlines()
            for key, value in FAST[name].items():
                lines = [f"{key} = {value!r}" if line.split("=")[0].strip() == key else line for line in lines]
            cell["source"] = "\n".join(lines)
    (folder / name).write_text(json.dumps(nb))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed: apt-get install chromium (make test installs it)"
    folder = tmp_path_factory.mktemp("lab")
    for name in FAST:
        _fast_copy(name, folder)
    # render every cell (no windowing), so each cell's prompt can be read after Run All
    settings = folder / ".lab-settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    news = folder / ".lab-settings" / "@jupyterlab" / "apputils-extension"     # no "news?" pop-up over the figures
    news.mkdir(parents=True)
    (news / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(folder / ".jupyter-config"), JUPYTER_RUNTIME_DIR=str(folder / ".rt"))
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={folder}", "--ServerApp.open_browser=False", "--allow-root",
         f"--LabApp.user_settings_dir={folder / '.lab-settings'}", "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        cwd=folder, env=env, stdout=open(folder / "jupyterlab.log", "w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise RuntimeError("JupyterLab did not start: " + (folder / "jupyterlab.log").read_text()[-2000:])
                time.sleep(0.5)
        from playwright.sync_api import sync_playwright
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            try:
                yield browser, f"http://127.0.0.1:{port}", token
            finally:
                browser.close()
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def _figure_state(page, title_start: str):
    """The data of the first plotly figure whose title starts with `title_start` (None if not rendered)."""
    return page.evaluate("""(start) => {
        for (const el of document.querySelectorAll('.js-plotly-plot')) {
            const t = el.layout && el.layout.title && (el.layout.title.text || el.layout.title);
            if (typeof t === 'string' && t.startsWith(start))
                return JSON.stringify([t, el.data.map(d => d.z || d.y)]);
        }
        return null; }""", title_start)


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
def test_notebook_in_jupyterlab(lab, name):
    browser, base, token = lab
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        # a workspace of its own, so no other notebook is restored beside this one
        page.goto(f"{base}/lab/workspaces/{Path(name).stem}/tree/{name}?reset&token={token}")
        panel = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
        panel.locator(".jp-Cell").first.wait_for(timeout=60_000)
        page.locator(".jp-StatusBar-TextItem", has_text="Idle").first.wait_for(timeout=90_000)   # kernel ready
        page.wait_for_timeout(2000)
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
        deadline = time.time() + 240
        while True:
            prompts = panel.locator(".jp-CodeCell .jp-InputPrompt").all_inner_texts()
            done = prompts and all(p.strip() not in ("[*]:", "[ ]:", "") for p in prompts)
            if done:
                break
            assert time.time() < deadline, f"{name}: cells still running: {prompts}"
            page.wait_for_timeout(1000)
        page.wait_for_timeout(1500)
        outputs = " ".join(panel.locator(".jp-OutputArea-output").all_inner_texts())
        assert "Traceback" not in outputs and "Error:" not in outputs, outputs[-2000:]
        assert panel.locator(".js-plotly-plot").count() > 0, f"{name}: no plotly figure rendered"
        if name in SLIDER_FIGURE:
            before = _figure_state(page, SLIDER_FIGURE[name])
            assert before is not None, f"{name}: the interactive figure did not render"
            handle = panel.locator(".widget-slider .noUi-handle").first
            handle.scroll_into_view_if_needed()
            handle.focus()
            pressed = time.perf_counter()
            page.keyboard.press("ArrowRight")           # one move; its latency: key press to the new figure
            page.wait_for_function("""([start, before]) => {
                for (const el of document.querySelectorAll('.js-plotly-plot')) {
                    const t = el.layout && el.layout.title && (el.layout.title.text || el.layout.title);
                    if (typeof t === 'string' && t.startsWith(start))
                        return JSON.stringify([t, el.data.map(d => d.z || d.y)]) !== before;
                }
                return false; }""", arg=[SLIDER_FIGURE[name], before], timeout=30_000)
            latency = time.perf_counter() - pressed
            after = _figure_state(page, SLIDER_FIGURE[name])
            assert after != before
            record = ARTIFACTS / "slider_latency.json"
            latencies = json.loads(record.read_text()) if record.exists() else {}
            latencies[name] = round(latency, 3)
            record.write_text(json.dumps(latencies, indent=1))
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
        page.screenshot(path=str(ARTIFACTS / f"{Path(name).stem}.png"), full_page=True)
    finally:
        page.close()
