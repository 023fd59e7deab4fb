"""`vidcorpus serve` end to end in a real browser: Debian's chromium driven by selenium through
Debian's chromium-driver. Filter the grid, open a clip, see its video play, label it, restart the
server, see the label. A screenshot of each page is kept (the test prints where)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests


CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="needs Debian's chromium and chromium-driver (apt-get install chromium "
                                       "chromium-driver; .ci/run installs both)")


@pytest.fixture(scope="module")
def built(serve_built) -> dict:
    return serve_built


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(built: dict, port: int, log: Path) -> subprocess.Popen:
    """`vidcorpus serve` as a user starts it; returns once it answers."""
    # the corpus folder holds the sources: dropped clips were never encoded (filter before you encode)
    # and play as previews rendered from their source frames
    corpus = str(Path(built["workdir"]).parent / "corpus")
    proc = subprocess.Popen([sys.executable, "-m", "vidcorpus.cli", "serve", "-w", built["workdir"], "--port",
                             str(port), "--user", "browser-test", "--media-root", corpus], stdout=log.open("a"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/favicon.ico", timeout=2).status_code == 204:
                return proc
        except requests.ConnectionError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"vidcorpus serve did not start: {log.read_text()[-2000:]}")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_filter_open_play_label_restart_and_see_the_label(built, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    artifacts = Path(os.environ.get("VIDCORPUS_TEST_ARTIFACTS") or tmp_path / "artifacts") / "serve"
    artifacts.mkdir(parents=True, exist_ok=True)
    print(f"screenshots: {artifacts}")
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    server = _start_server(built, port, log)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1000", "--no-first-run",
                "--autoplay-policy=no-user-gesture-required", "--disable-background-networking"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    wait = WebDriverWait(driver, 30)
    try:
        driver.get(base + "/")
        cards = lambda: [c.get_attribute("data-clip") for c in driver.find_elements(By.CSS_SELECTOR, "#grid .card")]  # noqa: E731
        assert sorted(cards()) == sorted(c["clip_id"] for c in built["clips"])
        video = driver.find_element(By.CSS_SELECTOR, "#grid video.hoverplay")
        ActionChains(driver).move_to_element(video).perform()  # grid clips play on hover
        wait.until(lambda d: d.execute_script("return arguments[0].currentTime > 0.2", video))
        driver.save_screenshot(str(artifacts / "1-grid.png"))

        Select(driver.find_element(By.ID, "decision")).select_by_value("dropped")
        driver.find_element(By.ID, "apply").click()
        wait.until(lambda d: "decision=dropped" in d.current_url)
        dropped = sorted(c["clip_id"] for c in built["clips"] if c["kept"] is False)
        assert sorted(cards()) == dropped
        assert "min_" not in driver.current_url and "max_" not in driver.current_url  # untouched sliders filter nothing
        driver.save_screenshot(str(artifacts / "2-grid-dropped.png"))

        clip = next(c for c in built["clips"] if c["clip_id"] in dropped and c["media_type"] == "video")["clip_id"]
        driver.find_element(By.CSS_SELECTOR, f'#grid .card[data-clip="{clip}"] a').click()
        wait.until(lambda d: d.find_element(By.ID, "clip-id").text == clip)
        played = wait.until(lambda d: d.execute_script(
            "const v = document.getElementById('media'); return v.currentTime > 0.3 && !v.error ? v.currentTime : 0"))
        assert played > 0.3
        driver.save_screenshot(str(artifacts / "3-clip-playing.png"))

        ActionChains(driver).send_keys("g").perform()  # the filter dropped it; the labeller says it is good
        wait.until(lambda d: d.find_element(By.ID, "label-status").text.startswith("saved: good"))
        assert "good by browser-test" in driver.find_element(By.ID, "labels").text
        ActionChains(driver).send_keys("2").perform()  # second thoughts: bad, for the second reason
        wait.until(lambda d: d.find_element(By.ID, "label-status").text == "saved: bad (static)")
        driver.save_screenshot(str(artifacts / "4-labelled.png"))

        _stop(server)
        server = _start_server(built, port, log)
        driver.get(f"{base}/clip/{clip}")
        labels = driver.find_element(By.ID, "labels").text.splitlines()
        assert labels[0].startswith("bad (static) by browser-test") and "good by browser-test" in labels[1]
        driver.save_screenshot(str(artifacts / "5-after-restart.png"))
    finally:
        driver.quit()
        _stop(server)
