"""The page in a real browser (headless Chromium through Selenium): draw a stroke, recognise, read the answer."""
from __future__ import annotations

import shutil
import socket
import threading
import time
from contextlib import contextmanager

import pytest

CHROMEDRIVER = shutil.which("chromedriver")
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
pytestmark = pytest.mark.skipif(not (CHROMEDRIVER and CHROMIUM),
                                reason="needs Debian's chromium and chromium-driver (apt-get install chromium "
                                       "chromium-driver; .ci/run installs them)")
pytest.importorskip("fastapi", reason="needs the serve extra: pip install 'okkhor[serve]'")
pytest.importorskip("selenium", reason="needs selenium (the dev extra)")

from helpers import make_checkpoint  # noqa: E402


@contextmanager
def running(app):
    """The app on uvicorn in a thread, on a free localhost port: yields its URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def test_draw_recognise_read_the_answer_and_screenshot(tiny_kaggle_dir, tmp_path):
    import httpx
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from okkhor.inference.serve.app import create_app
    from okkhor.inference.serve.recogniser import load_recogniser

    data = tiny_kaggle_dir()
    app = create_app(load_recogniser([make_checkpoint(tmp_path / "c.pt", data.root, seed=2)], "cpu"))
    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1000,760"):
        options.add_argument(arg)
    with running(app) as url:
        assert httpx.get(f"{url}/health").json()["status"] == "ok"
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        try:
            wait = WebDriverWait(driver, 20)
            driver.get(f"{url}/")
            wait.until(lambda d: d.find_element(By.ID, "status").text == "Write a grapheme.")
            pad = driver.find_element(By.ID, "pad")
            stroke = ActionChains(driver).move_to_element_with_offset(pad, -120, -50).click_and_hold()
            for dx, dy in ((40, 10), (40, 20), (30, 30), (-20, 30), (-50, 0)):
                stroke = stroke.move_by_offset(dx, dy)
            stroke.release().perform()
            driver.find_element(By.ID, "recognise").click()
            wait.until(lambda d: d.find_element(By.ID, "answer").get_attribute("data-ready") == "1")
            shown = {name: int(driver.find_element(By.CSS_SELECTOR, f'[data-target="{name}"] .label')
                               .get_attribute("data-label")) for name in data.names}
            bars = driver.find_elements(By.CSS_SELECTOR, f'[data-target="{data.names[0]}"] .top li')
            grapheme = driver.find_element(By.ID, "grapheme").text
            driver.save_screenshot(str(tmp_path / "page.png"))

            # the page shows what the API answers for the pad's own image
            drawn = driver.execute_script("return document.getElementById('pad').toDataURL('image/png')")
            answer = httpx.post(f"{url}/predict", json={"images": [drawn]}, timeout=30).json()["predictions"][0]
            assert shown == {name: answer[name]["label"] for name in data.names}
            assert grapheme == answer["grapheme"]
            assert len(bars) == min(5, data.num_classes[0])

            driver.find_element(By.ID, "undo").click()   # the only stroke undone: the pad is empty, no answer
            wait.until(lambda d: not d.find_element(By.ID, "answer").is_displayed())
        finally:
            driver.quit()
    shot = (tmp_path / "page.png").read_bytes()
    assert shot.startswith(b"\x89PNG") and len(shot) > 10_000
