"""Drive the demo page (scripts/demo.py) in a real headless Chromium through Playwright.

Used by tests/test_demo.py and, as a script, to make the README's screenshot:
``python tests/demo_browser.py CHECKPOINT IMAGE "SENTENCE" docs/img/demo.png``.
Playwright drives the system's Chromium (Debian: ``apt-get install chromium``; or set ``CMPC_CHROMIUM``):
Playwright's own browser download needs the network.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str | None:
    """``$CMPC_CHROMIUM``, else the first Chromium on PATH, else None."""
    if os.environ.get("CMPC_CHROMIUM"):
        return os.environ["CMPC_CHROMIUM"]
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def start_demo(checkpoint, work_dir: Path, port: int, *extra: str) -> subprocess.Popen:
    """Start ``scripts/demo.py`` on 127.0.0.1:``port``; its output goes to ``work_dir/demo.log``, its temporary
    files under ``work_dir/tmp``."""
    log = open(work_dir / "demo.log", "w")
    (work_dir / "tmp").mkdir(exist_ok=True)
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1", "TMPDIR": str(work_dir / "tmp")}
    return subprocess.Popen(
        [sys.executable, "scripts/demo.py", f"checkpoint={checkpoint}", f"demo.port={port}",
         f"paths.runs={work_dir / 'runs'}", *extra],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_sigint_by_default,
    )


def _sigint_by_default() -> None:
    """A suite started as a shell background job (``pytest &``) inherits SIGINT ignored, and Python then never turns
    Ctrl+C into KeyboardInterrupt: give the demo the default disposition, as in a terminal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def stop_demo(process: subprocess.Popen) -> None:
    """Ctrl+C, as a person stops it (the demo then removes its work folder); killed if it hangs."""
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_until_serving(url: str, process: subprocess.Popen, timeout: float = 60) -> None:
    """Poll ``url`` until it answers 200; raises ``RuntimeError`` if the server exits or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the demo exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"the demo did not answer at {url} within {timeout:.0f} s")


def segment_in_browser(url: str, image, sentence: str, screenshot, *, timeout_ms: int = 30_000) -> dict:
    """Open the page, press Segment without a picture (the page must answer with one error line), upload
    ``image``, type ``sentence``, press Segment, wait for the overlay and the word-type chart, save a full-page
    ``screenshot``. Returns the texts the page showed: ``{"model", "empty", "status", "table"}``."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(url, wait_until="domcontentloaded")
            page.wait_for_selector("#segment", timeout=timeout_ms)
            seen = {"model": page.locator("#model-status textarea").input_value()}
            page.click("#segment")  # nothing uploaded yet
            status = page.locator("#status textarea")
            page.wait_for_function("() => document.querySelector('#status textarea').value !== ''", timeout=timeout_ms)
            seen["empty"] = status.input_value()
            page.locator("#picture input[type=file]").set_input_files(str(image))
            page.wait_for_selector("#picture img", timeout=timeout_ms)
            page.locator("#sentence textarea").fill(sentence)
            page.click("#segment")
            page.wait_for_selector("#overlay img", timeout=timeout_ms)
            page.wait_for_selector("#word-types img", timeout=timeout_ms)
            page.wait_for_selector("#attention img", timeout=timeout_ms)
            page.wait_for_function("() => !document.querySelector('#status textarea').value.startsWith('error')",
                                   timeout=timeout_ms)
            seen["status"] = status.input_value()
            seen["table"] = page.locator("#word-table").inner_text()
            Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
            return seen
        finally:
            browser.close()


def main(argv: list[str]) -> None:
    """``CHECKPOINT IMAGE SENTENCE OUT.png``: start the demo, segment in the browser, save the screenshot."""
    checkpoint, image, sentence, out = argv
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"cmpc_demo_shot_{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    process = start_demo(Path(checkpoint).resolve(), work, port)
    try:
        wait_until_serving(f"http://127.0.0.1:{port}/", process)
        print(segment_in_browser(f"http://127.0.0.1:{port}/", Path(image).resolve(), sentence, Path(out).resolve()))
    finally:
        stop_demo(process)
    from PIL import Image

    with Image.open(out) as shot:  # 128 colours keep the README's picture small
        small = shot.convert("RGB").quantize(colors=128)
    small.save(out, optimize=True)
    print(f"wrote {out} ({Path(out).stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main(sys.argv[1:])
