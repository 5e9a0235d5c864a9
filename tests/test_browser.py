"""End to end in a real browser: the latent explorer in JupyterLab, driven by headless Chromium.

What a student does in class, automated: start JupyterLab from the course's environment
(fast mode), open a notebook, *Run > Run All Cells*, then look:

1. no cell shows an error and every code cell ran;
2. the latent explorer's sliders are real widgets, not the kernel's text fallback
   ``HBox(children=(VBox(children=(FloatSlider(...`` that JupyterLab shows when the
   widget frontend (``@jupyter-widgets/jupyterlab-manager``) is missing;
3. moving a slider (keyboard, on the focused slider handle) redraws the decoded image.

Notebooks: ``notebooks/week12/03_vaes_in_pytorch.ipynb`` (a missing file fails) and
``tests/fixtures/latent_explorer_untrained.ipynb`` (the same explorer on an untrained conv
VAE: seconds). The checks are functions that raise
:class:`BrowserCheckFailed` with the reason, and ``test_widget_check_detects_missing_frontend``
runs them in a JupyterLab whose widget extension is disabled and asserts that check 2 fails:
the main test can fail.

The browser is Debian's ``/usr/bin/chromium`` driven by the Python ``playwright`` package
(its own browser download, ``playwright install``, is never used). Without Chromium or
playwright the tests skip, unless ``COURSE_REQUIRE_BROWSER`` is set (``.ci/run`` sets it):
then they fail. Screenshots go to ``build/screenshots/``.

JupyterLab runs isolated from the user's own Jupyter configuration: temporary config,
runtime, settings and workspace folders; notebook windowing off (every cell in the DOM) and
autosave off (the notebook files in the repository are never written).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK_ROOT = REPO / "notebooks"
NOTEBOOK = "week12/03_vaes_in_pytorch.ipynb"  # relative to NOTEBOOK_ROOT
FIXTURES = REPO / "tests" / "fixtures"
FIXTURE_NOTEBOOK = "latent_explorer_untrained.ipynb"  # relative to FIXTURES: an untrained conv VAE, seconds
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = REPO / "build" / "screenshots"
WIDGET_MANAGER = "@jupyter-widgets/jupyterlab-manager"
# Without the background-networking flags Chromium keeps opening connections to Google's
# services, which a closed network refuses by the dozen.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# Generous limits: a loaded 2-core machine needs a minute or more for a kernel start plus
# the fast-mode training of the notebook.
SERVER_START_S = 120
KERNEL_READY_S = 120
RUN_ALL_S = 300
WIDGET_RENDER_S = 30
REDRAW_S = 60


class BrowserCheckFailed(AssertionError):
    """A check of the notebook page failed; ``str(err)`` says what the student would see."""


# ---------------------------------------------------------------------- skip or fail
def _browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401 (imported only to see whether it is installed)
    except ImportError:
        return "the Python package playwright is not installed (pip install -r requirements.txt)"
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} is missing (Debian: apt-get install chromium)"
    return None


def _require_browser():
    missing = _browser_missing()
    if missing is None:
        return
    if os.environ.get("COURSE_REQUIRE_BROWSER", "").strip() not in ("", "0"):
        pytest.fail(f"COURSE_REQUIRE_BROWSER is set but {missing}")
    pytest.skip(f"browser test skipped: {missing} (set COURSE_REQUIRE_BROWSER=1 to make this an error)")


@pytest.fixture(scope="module")
def browser():
    _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


# ---------------------------------------------------------------------- JupyterLab
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    """A JupyterLab server in its own process group, with its own config folders."""

    def __init__(self, home: Path, root_dir: Path = NOTEBOOK_ROOT, disabled_extensions=()):
        self.home, self.port, self.token = home, _free_port(), secrets.token_hex(16)
        config, settings = home / "config", home / "settings"
        # Page config in a private JUPYTER_CONFIG_DIR: the announcements plugin off (it would ask
        # to fetch news), plus whatever the test disables. The environment's own config
        # (sys.prefix/etc/jupyter: the server extensions) still applies.
        disabled = {"@jupyterlab/apputils-extension:announcements": True}
        disabled.update({name: True for name in disabled_extensions})
        _write_json(config / "labconfig" / "page_config.json", {"disabledExtensions": disabled})
        # No windowing (every cell stays in the DOM), no autosave (the repository's notebook
        # is never written, outputs included).
        _write_json(settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings",
                    {"windowingMode": "none"})
        _write_json(settings / "@jupyterlab" / "docmanager-extension" / "plugin.jupyterlab-settings",
                    {"autosave": False})
        # The kernel inherits this environment: fast mode, and the data folder as in conftest.py
        # ($COURSE_DATA, else ../shared/data when it holds the MNIST test split).
        env = dict(os.environ, COURSE_FAST="1", JUPYTER_CONFIG_DIR=str(config),
                   JUPYTER_RUNTIME_DIR=str(home / "runtime"))
        shared = REPO.parent / "shared" / "data"
        if not env.get("COURSE_DATA") and (shared / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz").is_file():
            env["COURSE_DATA"] = str(shared)
        cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={self.port}",
               f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={root_dir}",
               f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={home / 'workspaces'}",
               # the checkpoint JupyterLab makes when it opens a notebook: here, not next to the notebook
               f"--FileCheckpoints.checkpoint_dir={home / 'checkpoints'}"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-root")
        self.log_path = home / "jupyterlab.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}?token={self.token}"

    def log_tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:]

    def wait_until_up(self, timeout: float = SERVER_START_S):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url("api/status"), timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"JupyterLab did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self):
        """SIGTERM to the process group (the server then shuts its kernels down), SIGKILL if needed."""
        if self.proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self._log.close()


def _write_json(path: Path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


@pytest.fixture
def start_lab(tmp_path, request):
    """``start_lab(root_dir=NOTEBOOK_ROOT, disabled_extensions=())`` -> a running :class:`Lab`,
    always stopped afterwards."""
    labs = []

    def start(root_dir=NOTEBOOK_ROOT, disabled_extensions=()):
        lab = Lab(tmp_path / f"lab{len(labs)}", root_dir, disabled_extensions)
        labs.append(lab)
        lab.wait_until_up()
        return lab

    def stop_all():
        for lab in labs:
            lab.stop()

    request.addfinalizer(stop_all)
    return start


# ---------------------------------------------------------------------- driving the page
PROMPTS_JS = ("() => [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')]"
              ".map(e => e.textContent.trim())")
KERNEL_IDLE_JS = r"""() => [...document.querySelectorAll('.jp-StatusBar-TextItem')].some(e => {
    const t = e.textContent.trim(); return /\|\s*Idle$/.test(t) && !t.startsWith('No Kernel'); })"""
RUN_STARTED_JS = (f"() => {{ const p = ({PROMPTS_JS})(); "
                  "return p.some(t => t.includes('*')) || (p.length > 0 && p.every(t => /\\[\\d+\\]/.test(t))); }")
RUN_FINISHED_JS = (f"() => {{ const p = ({PROMPTS_JS})(); "
                   f"return !p.some(t => t.includes('*')) && ({KERNEL_IDLE_JS})(); }}")


def open_and_run_all(page, lab: Lab, notebook: str = NOTEBOOK):
    """Open ``notebook`` in JupyterLab, wait for its kernel, *Run > Run All Cells*, wait until done."""
    page.goto(lab.url(f"lab/tree/{notebook}") + "&reset")  # reset: a fresh workspace, this notebook only
    page.wait_for_selector(".jp-Notebook .jp-CodeCell", timeout=KERNEL_READY_S * 1000)
    # The execution indicator says "idle" before any kernel exists; the status bar says
    # "No Kernel | Initializing", then "Python 3 (ipykernel) | Connecting", then "... | Idle".
    page.wait_for_function(KERNEL_IDLE_JS, timeout=KERNEL_READY_S * 1000)
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
    page.wait_for_function(RUN_STARTED_JS, timeout=30_000)
    page.wait_for_function(RUN_FINISHED_JS, timeout=RUN_ALL_S * 1000, polling=500)


EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b(:|$)", re.M)
ERROR_LINE = re.compile(r"Traceback \(most recent call last\)|" + EXCEPTION_LINE.pattern, re.M)
STDERR_OUTPUT = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'


def check_no_errors(page):
    """Every code cell ran (has an execution count) and none shows an error output.

    JupyterLab renders error outputs (tracebacks) like stderr streams, as
    ``.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]``; warnings and
    progress bars land there too, so an error is a stderr output with a traceback header or a
    line starting with an exception name (``AssertionError: ...``, ``SyntaxError: ...``).
    """
    cells = page.locator(".jp-Notebook .jp-CodeCell")
    errors, not_run = [], []
    for i in range(cells.count()):
        cell = cells.nth(i)
        prompt = cell.locator(".jp-InputPrompt").first.text_content().strip()
        for text in cell.locator(STDERR_OUTPUT).all_text_contents():
            if ERROR_LINE.search(text):
                lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
                named = [line for line in lines if EXCEPTION_LINE.match(line)]
                errors.append(f"code cell {i + 1} {prompt} shows an error: {(named or lines)[-1][:300]}")
        if not re.fullmatch(r"\[\d+\]:", prompt):
            not_run.append(f"{i + 1} ({prompt})")
    if errors:
        raise BrowserCheckFailed("; ".join(errors))
    if not_run:
        raise BrowserCheckFailed(f"code cells without an execution count after Run All: {', '.join(not_run)}")
    if cells.count() == 0:
        raise BrowserCheckFailed("the notebook page shows no code cells")


EXPLORER = ".jp-OutputArea-output .widget-hbox:has(.widget-hslider .noUi-handle):has(img.widget-image)"
WIDGET_TEXT_FALLBACK = re.compile(r"\b(HBox|VBox|FloatSlider|IntSlider)\(")
SETTLED_JS = """([explorer, fallback]) => document.querySelector(explorer) !== null ||
    [...document.querySelectorAll('.jp-OutputArea-output')].some(
        e => new RegExp(fallback).test(e.textContent) || e.textContent.includes('Error displaying widget'))"""


def check_widgets_render(page):
    """The latent explorer renders as live widgets; returns its locator.

    Raises :class:`BrowserCheckFailed` starting with "widget frontend missing" when the
    kernel's widget shows as its text fallback (no widget manager in the page), or when the
    page says "Error displaying widget" / "Loading widget..." instead of sliders.
    """
    explorer = page.locator(EXPLORER).first
    try:  # until the explorer or a final fallback shows ("Loading widget..." may be transient)
        page.wait_for_function(SETTLED_JS, arg=[EXPLORER, WIDGET_TEXT_FALLBACK.pattern],
                               timeout=WIDGET_RENDER_S * 1000)
        explorer.wait_for(state="visible", timeout=1000)
    except Exception:  # playwright's TimeoutError; diagnose what the page shows instead
        outputs = page.locator(".jp-OutputArea-output")
        texts = [t.strip() for t in outputs.all_text_contents()]
        fallback = [t for t in texts if WIDGET_TEXT_FALLBACK.search(t)]
        if fallback:
            raise BrowserCheckFailed("widget frontend missing: the latent explorer shows as text "
                                     f"{fallback[0][:120]!r} instead of sliders "
                                     f"({WIDGET_MANAGER} not loaded)") from None
        broken = [t for t in texts if "Error displaying widget" in t or "Loading widget" in t]
        if broken:
            raise BrowserCheckFailed(f"widget frontend missing: the page says {broken[0][:200]!r}") from None
        raise BrowserCheckFailed("no latent explorer (sliders next to a decoded image) in the notebook's "
                                 "outputs") from None
    n_sliders = explorer.locator(".widget-hslider").count()
    if n_sliders < 1:
        raise BrowserCheckFailed("the latent explorer has no slider")
    return explorer


def _image_bytes(img) -> bytes:
    """The PNG the kernel sent for an ipywidgets Image (its ``src`` is a blob: URL)."""
    data = img.evaluate("async (el) => Array.from(new Uint8Array(await (await fetch(el.src)).arrayBuffer()))")
    return bytes(data)


def check_slider_redraws(page, explorer, screenshot_prefix: Path | None = None):
    """Moving the first slider with the keyboard (End: to its maximum) redraws the decoded image.

    Compares the image the kernel sent (the blob behind ``img.src``) and the pixels shown
    (element screenshots) before and after. Returns (slider value before, after).
    """
    img = explorer.locator("img.widget-image").first
    slider = explorer.locator(".widget-hslider").first
    handle = slider.locator(".noUi-handle").first
    readout = slider.locator(".widget-readout").first
    img.wait_for(state="visible")
    src_before, value_before = img.get_attribute("src"), readout.text_content().strip()
    png_before, shot_before = _image_bytes(img), explorer.screenshot()
    if screenshot_prefix:
        (screenshot_prefix.parent / (screenshot_prefix.name + "_before.png")).write_bytes(shot_before)

    handle.focus()
    page.keyboard.press("End")  # noUiSlider's keyboard support: End = maximum
    try:
        page.wait_for_function("([el, before]) => el.getAttribute('src') !== before",
                               arg=[img.element_handle(), src_before], timeout=REDRAW_S * 1000)
    except Exception:
        value = readout.text_content().strip()
        raise BrowserCheckFailed(f"moving the slider (readout {value_before} -> {value}) did not redraw the "
                                 f"image within {REDRAW_S} s") from None
    value_after = readout.text_content().strip()
    if value_after == value_before:
        raise BrowserCheckFailed(f"the slider did not move (readout stays {value_before})")
    page.wait_for_timeout(500)  # let the new image paint
    png_after, shot_after = _image_bytes(img), explorer.screenshot()
    if screenshot_prefix:
        (screenshot_prefix.parent / (screenshot_prefix.name + "_after.png")).write_bytes(shot_after)
    if hashlib.sha256(png_before).digest() == hashlib.sha256(png_after).digest():
        raise BrowserCheckFailed(f"slider {value_before} -> {value_after}: the kernel sent the same image again")
    if shot_before == shot_after:
        raise BrowserCheckFailed(f"slider {value_before} -> {value_after}: the image on screen did not change")
    return value_before, value_after


def _screenshot_path(name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS / name


def _new_page(browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(60_000)
    return page


# ---------------------------------------------------------------------- the tests
@pytest.mark.parametrize("root_dir, notebook", [
    pytest.param(NOTEBOOK_ROOT, NOTEBOOK, id="week12"),
    pytest.param(FIXTURES, FIXTURE_NOTEBOOK, id="fixture"),
])
def test_latent_explorer_in_jupyterlab(browser, start_lab, root_dir, notebook):
    """Run All in JupyterLab: no errors, live sliders, and a slider move redraws the image.

    ``week12`` is the course notebook (fast-mode training included); ``fixture`` the same
    explorer on an untrained model, so that the browser path stays tested whatever a course
    notebook does.
    """
    assert (root_dir / notebook).is_file(), f"{(root_dir / notebook).relative_to(REPO)} is missing (renamed?)"
    lab = start_lab(root_dir=root_dir)
    page = _new_page(browser)
    stem = Path(notebook).stem
    try:
        open_and_run_all(page, lab, notebook)
        check_no_errors(page)
        explorer = check_widgets_render(page)
        before, after = check_slider_redraws(page, explorer, _screenshot_path(f"{stem}_explorer"))
        explorer.scroll_into_view_if_needed()
        page.screenshot(path=_screenshot_path(f"{stem}.png"))
        print(f"slider z1 {before} -> {after}; screenshots in {SCREENSHOTS}")
    except BaseException:
        page.screenshot(path=_screenshot_path(f"{stem}_FAILED.png"))
        print(lab.log_tail())
        raise
    finally:
        page.close()


def test_widget_check_detects_missing_frontend(browser, start_lab):
    """In a JupyterLab without the widget extension the widget check must fail: the main test can fail.

    Same checks, same explorer widget (helpers.widgets), on the fixture notebook (an untrained
    model: seconds instead of the minutes of the week-12 training).
    """
    lab = start_lab(root_dir=FIXTURES, disabled_extensions=[WIDGET_MANAGER])
    page = _new_page(browser)
    try:
        open_and_run_all(page, lab, FIXTURE_NOTEBOOK)
        # The extension really is off: the page config lists it as disabled ...
        config = json.loads(page.locator("#jupyter-config-data").text_content())
        assert WIDGET_MANAGER in config.get("disabledExtensions", []), config.get("disabledExtensions")
        check_no_errors(page)  # ... the kernel side still runs cleanly ...
        with pytest.raises(BrowserCheckFailed, match="widget frontend missing: the latent explorer shows as text"):
            check_widgets_render(page)  # ... and the widget check notices the missing frontend.
        assert page.locator(".widget-hslider").count() == 0
        page.screenshot(path=_screenshot_path("no_widget_frontend.png"))
    except BaseException:
        print(lab.log_tail())
        raise
    finally:
        page.close()
