"""Check an ``ssmsteer report`` HTML page in a real headless browser (Debian's ``chromium``) and take
screenshots of it, for a person to look at.

    ssmsteer report RESULTS... --out report/ && python scripts/check_report_html.py report/

Loads a copy of the page, in a window of a normal screen's size (1400×1000), with a small self-test
appended, which sorts the leaderboard by its average (clicking the header twice), measures the plots and
the page's width; reads the verdict back from ``--dump-dom``; then takes two screenshots of the page
itself: the first screen (``report_top.png``), the whole page (``report_full.png``) and the scores
per task scrolled right and down inside their box (``report_scrolled.png``: the header row and the task
column must stay in view), into ``report/screenshots/``. Exits 1 (and says why) when the table did not
render, sorting did not reorder it, a plot is not visible, or the page is wider than the window (a table
that runs off the page).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SELF_TEST = """
<script>
window.addEventListener("load", function () {
  var result = {};
  var table = document.getElementById("leaderboard");
  var headers = table.tHead.rows[0].cells;
  var column = Array.prototype.findIndex.call(headers, function (th) {
    return th.textContent.trim() === "average";
  });
  function values() {
    return Array.prototype.map.call(table.tBodies[0].rows, function (row) {
      var sort = row.cells[column].dataset.sort;
      return sort === "" ? null : Number(sort);
    });
  }
  function isSorted(list, descending) {
    var numbers = list.filter(function (v) { return v !== null; });
    for (var i = 1; i < numbers.length; i++) {
      if (descending ? numbers[i - 1] < numbers[i] : numbers[i - 1] > numbers[i]) { return false; }
    }
    return list.slice(numbers.length).every(function (v) { return v === null; });  // no value: last
  }
  result.rows = table.tBodies[0].rows.length;
  result.table_height = table.getBoundingClientRect().height;
  headers[column].click();
  result.descending = values();
  result.sorted_descending = isSorted(result.descending, true)
    && headers[column].getAttribute("aria-sort") === "descending";
  headers[column].click();
  result.ascending = values();
  result.sorted_ascending = isSorted(result.ascending, false)
    && headers[column].getAttribute("aria-sort") === "ascending";
  result.page_width = document.documentElement.scrollWidth;
  result.window_width = window.innerWidth;
  result.page_height = document.documentElement.scrollHeight;
  result.images = document.images.length;
  result.images_visible = Array.prototype.filter.call(document.images, function (img) {
    var box = img.getBoundingClientRect();
    return img.complete && img.naturalWidth > 0 && box.width > 100 && box.height > 100;
  }).length;
  var out = document.createElement("pre");
  out.id = "selftest";
  out.textContent = JSON.stringify(result);
  document.body.appendChild(out);
});
</script>
"""


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise FileNotFoundError("no chromium on PATH (Debian: apt-get install -y chromium)")


WINDOW = (1400, 1000)  # a normal laptop screen's browser window, in CSS pixels
MAX_FULL_HEIGHT = 20000  # chromium's screenshots of taller pages fail or come back blank


def _run_browser(*args: str) -> str:
    with tempfile.TemporaryDirectory() as profile:
        command = [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            *args,
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"chromium exited {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout


# shows the per-task scores first (what comes before it hidden: headless screenshots do not follow a
# scrolled window) and scrolls its box right and down: the header row and the task column must stay
SCROLLED = """
<script>
window.addEventListener("load", function () {
  var table = document.getElementById("scores");
  if (!table) { return; }
  var box = table.parentElement;
  for (var node = box.previousElementSibling; node; node = node.previousElementSibling) {
    if (node.tagName !== "H2") { node.style.display = "none"; }
  }
  box.scrollLeft = box.scrollWidth;
  box.scrollTop = 300;
});
</script>
"""


def screenshot(html_path: Path, out: Path, width: int, height: int, script: str = "") -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / html_path.name
        page.write_text(html_path.read_text(encoding="utf-8").replace("</body>", script + "</body>", 1))
        _run_browser(f"--window-size={width},{height}", f"--screenshot={Path(out).resolve()}", page.as_uri())
    if not out.is_file() or out.stat().st_size == 0:
        raise AssertionError(f"chromium wrote no screenshot to {out}")
    return out


def check(html_path: Path, screenshots: Path | None = None) -> dict:
    """Runs the self-test; raises AssertionError naming what failed; returns the measurements, and the
    screenshots taken (``screenshots``: the folder to write them into) under "screenshots"."""
    html_path = Path(html_path).resolve()
    page = html_path.read_text(encoding="utf-8")
    if "</body>" not in page:
        raise AssertionError(f"{html_path}: no </body>; not a report page")
    width, height = WINDOW
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.html"
        probe.write_text(page.replace("</body>", SELF_TEST + "</body>", 1), encoding="utf-8")
        dom = _run_browser(
            f"--window-size={width},{height}", "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()
        )
    found = re.search(r'<pre id="selftest">(.*?)</pre>', dom, re.S)
    if not found:
        raise AssertionError("the page's script did not run (no self-test verdict in the DOM)")
    result = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    problems = []
    if result["rows"] < 1 or result["table_height"] <= 0:
        problems.append(f"the leaderboard did not render ({result['rows']} rows)")
    if not result["sorted_descending"]:
        problems.append(f"first click on 'average' did not sort descending: {result['descending']}")
    if not result["sorted_ascending"]:
        problems.append(f"second click on 'average' did not sort ascending: {result['ascending']}")
    if result["images"] < 1 or result["images_visible"] != result["images"]:
        problems.append(f"{result['images_visible']} of {result['images']} plots visible")
    if result["page_width"] > result["window_width"]:
        problems.append(
            f"the page is {result['page_width']} px wide in a {result['window_width']} px window: "
            "something runs off the page"
        )
    if problems:
        raise AssertionError(f"{html_path}: " + "; ".join(problems))
    if screenshots is not None:
        screenshots.mkdir(parents=True, exist_ok=True)
        full_height = min(result["page_height"], MAX_FULL_HEIGHT)
        result["screenshots"] = [
            str(screenshot(html_path, screenshots / "report_top.png", width, height)),
            str(screenshot(html_path, screenshots / "report_full.png", width, full_height)),
            str(screenshot(html_path, screenshots / "report_scrolled.png", width, height, SCROLLED)),
        ]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, help="folder written by `ssmsteer report` (or its report.html)")
    parser.add_argument("--out", type=Path, help="folder for the screenshots (default: REPORT/screenshots)")
    args = parser.parse_args(argv)
    html_path = args.report / "report.html" if args.report.is_dir() else args.report
    out = args.out or html_path.parent / "screenshots"
    try:
        result = check(html_path, out)
    except AssertionError as exc:
        print(f"FAIL: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    plots = sorted(str(p) for p in html_path.parent.glob("*.png"))
    print(
        f"OK: {result['rows']} rows, sorting works, {result['images_visible']} plots visible, the page fits "
        f"a {result['window_width']} px window.\nLook at: {', '.join(result['screenshots'] + plots)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
