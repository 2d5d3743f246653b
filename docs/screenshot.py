"""Screenshot of a run report as headless Chromium renders it at 1280 px (what docs/run-report.png shows).

    python docs/screenshot.py runs/default/report.html docs/run-report.png [--open]

Needs Debian's chromium + chromium-driver (`make browser`) and selenium (the test extras). ``--open`` expands
every section first; by default the page is taken as a reader first sees it.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

WIDTH = 1280


def screenshot(page: Path, out: Path, open_all: bool = False) -> tuple[int, int]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts, service=Service(shutil.which("chromedriver") or "chromedriver"))
    try:
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                               {"width": WIDTH, "height": 900, "deviceScaleFactor": 1, "mobile": False})
        driver.get(page.resolve().as_uri())
        if open_all:
            driver.execute_script("document.querySelectorAll('details').forEach(d => d.open = true)")
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                               {"width": WIDTH, "height": height, "deviceScaleFactor": 1, "mobile": False})
        out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out))
        return WIDTH, height
    finally:
        driver.quit()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("page", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--open", action="store_true", help="expand every section first")
    a = ap.parse_args()
    print(a.out, screenshot(a.page, a.out, a.open))
