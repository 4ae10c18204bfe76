"""Screenshot an HTML report in headless Chromium, to look at the page as a reader would.

    python tools/report_screenshot.py r.html -o r.png [--width 1200] [--height 2400]

Needs a Chromium binary (Debian: ``apt-get install chromium``; also found as
``chromium-browser``, ``chromium-headless-shell``, ``google-chrome``). The page is opened from
the file system with the network off, so a page that needed the network would show it.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-headless-shell", "chromium-browser", "google-chrome", "headless_shell")


def find_browser() -> str | None:
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


def screenshot(page: Path, out: Path, width: int = 1200, height: int = 2400, timeout: float = 120.0) -> None:
    browser = find_browser()
    if browser is None:
        raise SystemExit(f"report_screenshot: no Chromium found (looked for {', '.join(BROWSERS)}); "
                         "apt-get install chromium")
    with tempfile.TemporaryDirectory(prefix="gp-chromium-") as profile:
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--user-data-dir={profile}", "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
               f"--screenshot={out.resolve()}", f"--window-size={width},{height}", page.resolve().as_uri()]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if res.returncode != 0 or not out.exists():
        raise SystemExit(f"report_screenshot: {browser} failed ({res.returncode}): {res.stderr.strip()[-500:]}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("page", type=Path, help="the .html report")
    p.add_argument("-o", "--output", type=Path, required=True, help="the .png to write")
    p.add_argument("--width", type=int, default=1200)
    p.add_argument("--height", type=int, default=2400)
    args = p.parse_args(argv)
    if not args.page.is_file():
        raise SystemExit(f"report_screenshot: {args.page}: no such file")
    screenshot(args.page, args.output, args.width, args.height)
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
