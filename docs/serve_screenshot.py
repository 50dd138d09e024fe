"""docs/serve.png: the page of `okkhor serve` in headless Chromium, a grapheme drawn on its pad stroke by stroke.

Usage: python docs/serve_screenshot.py CHECKPOINT [--grapheme কি] [--out docs/serve.png]
The strokes follow the centreline of the grapheme as the synth renderer draws it (okkhor.sources.synth.hand's
centreline, walked into pen strokes), sent to the page as pointer events through Selenium; then Recognise, and the
page with its answer is saved. Needs the serve and synth extras, chromium and chromium-driver. Prints the answer.
"""
from __future__ import annotations

import argparse
import json
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PAGE_WIDTH = 236   # the competition page's width, which the pad's width stands for


def strokes_of(text: str) -> list[list[tuple[int, int]]]:
    """Pen strokes [(x, y), ...] on the 236x137 page along the rendered grapheme's centreline: from an end of
    the line, each step to the nearest centreline pixel within 2 pixels not yet drawn."""
    from okkhor.sources.synth.fonts import render_grapheme
    from okkhor.sources.synth.hand import centreline

    mask = (render_grapheme(text) < 128).astype(np.uint8)
    left = {(int(x), int(y)) for y, x in np.argwhere(centreline(mask))}

    def near(p, reach=2):
        found = [(abs(dx) + abs(dy), (p[0] + dx, p[1] + dy)) for dx in range(-reach, reach + 1)
                 for dy in range(-reach, reach + 1) if (dx or dy) and (p[0] + dx, p[1] + dy) in left]
        return [q for _, q in sorted(found)]

    strokes = []
    while left:
        point = min(left, key=lambda p: (len(near(p)), p[1], p[0]))   # an end of a line first
        stroke = [point]
        left.discard(point)
        while True:
            left.difference_update(near(point, 1))   # the ridge can be two pixels wide: take both
            ahead = near(point)
            if not ahead:
                break
            point = ahead[0]
            left.discard(point)
            stroke.append(point)
        if len(stroke) > 2:
            strokes.append(stroke[::2] + ([stroke[-1]] if len(stroke) % 2 == 0 else []))
    return strokes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--grapheme", default="\u0995\u09bf")   # কি
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "serve.png")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    import uvicorn
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from okkhor.inference.serve.app import create_app
    from okkhor.inference.serve.recogniser import load_recogniser

    app = create_app(load_recogniser([args.checkpoint], "cpu"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    options = Options()
    options.binary_location = shutil.which("chromium") or shutil.which("google-chrome")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1000,860"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.get(f"http://127.0.0.1:{sock.getsockname()[1]}/")
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: d.find_element(By.ID, "status").text == "Write a grapheme.")
        driver.find_element(By.ID, "auto").click()   # one request, after the last stroke
        pad = driver.find_element(By.ID, "pad")
        scale = pad.rect["width"] / PAGE_WIDTH   # page pixels -> CSS pixels of the pad
        cx, cy = pad.rect["width"] / 2, pad.rect["height"] / 2
        for stroke in strokes_of(args.grapheme):
            x0, y0 = stroke[0]
            chain = ActionChains(driver, duration=0).move_to_element_with_offset(
                pad, round(x0 * scale - cx), round(y0 * scale - cy)).click_and_hold()
            for (xa, ya), (xb, yb) in zip(stroke, stroke[1:], strict=False):
                chain = chain.move_by_offset(round(xb * scale) - round(xa * scale),
                                             round(yb * scale) - round(ya * scale))
            chain.release().perform()
        driver.find_element(By.ID, "recognise").click()
        wait.until(lambda d: d.find_element(By.ID, "answer").get_attribute("data-ready") == "1")
        time.sleep(0.5)   # the font settles
        args.out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(args.out))
        drawn = driver.execute_script("return document.getElementById('pad').toDataURL('image/png')")
    finally:
        driver.quit()
    import httpx

    answer = httpx.post(f"http://127.0.0.1:{sock.getsockname()[1]}/predict", json={"images": [drawn]},
                        timeout=60).json()["predictions"][0]
    server.should_exit = True
    thread.join(10)
    print(json.dumps({"drawn": args.grapheme, "answer": answer["grapheme"],
                      **{n: answer[n]["label"] for n in ("grapheme_root", "vowel_diacritic", "consonant_diacritic")},
                      "out": str(args.out)}, ensure_ascii=False))


if __name__ == "__main__":
    main()
