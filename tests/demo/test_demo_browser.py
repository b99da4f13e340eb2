"""The image page served by Streamlit and rendered by a real (headless) Chromium."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from demo_browser import Chromium, find_chromium
from demo_support import REPO


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served_page(tmp_path):
    """``streamlit run scripts/demo/sampling.py`` on a free localhost port (killed after)."""
    port = _free_port()
    env = {
        **os.environ,
        "SGM_DEMO_CHECKPOINTS": str(tmp_path / "checkpoints"),
        "SGM_DEMO_DEVICE": "cpu",
    }
    log = open(tmp_path / "streamlit.log", "w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            "scripts/demo/sampling.py",
            "--server.headless",
            "true",
            "--server.address",
            "127.0.0.1",
            "--server.port",
            str(port),
            "--browser.gatherUsageStats",
            "false",
            "--server.fileWatcherType",
            "none",
        ],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail(
                    "streamlit did not start: " + (tmp_path / "streamlit.log").read_text()[-2000:]
                )
            time.sleep(0.25)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=15)
        log.close()


def test_sampling_page_renders_in_chromium(served_page, tmp_path):
    binary = find_chromium()
    if binary is None:
        pytest.skip(
            "Chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)"
        )
    from PIL import Image

    with Chromium(binary, tmp_path / "profile") as browser:
        browser.open(served_page)
        title = browser.wait_for(
            "(() => { const h = document.querySelector('h1'); return h && h.innerText; })()"
        )
        assert title.strip() == "Stable Diffusion sampling"
        prompt = browser.wait_for(
            "(() => { const t = document.querySelector('textarea[aria-label=\"Prompt\"]');"
            " return t && t.value; })()"
        )
        assert prompt.startswith("Astronaut in a jungle")
        message = browser.wait_for(
            "(() => { const a = [...document.querySelectorAll('[data-testid=\"stAlert\"]')];"
            " return a.map(e => e.innerText).join('\\n'); })()"
        )
        assert "sd_xl_base_1.0.safetensors not found" in message
        shot = browser.screenshot(tmp_path / "sampling_page.png")
    with Image.open(shot) as image:
        assert image.size == (1280, 900)
        colours = image.convert("L").getextrema()
    assert colours[0] < colours[1]  # not a blank page
