"""The run report and the leaderboard page in a real headless browser (Debian's chromium driven by Playwright):
plots written, no console error, sorting reorders rows, untrusted names and outputs execute nothing."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from harness.leaderboard.simulate import simulate, write_eval, write_run
from harness.io import atomic_write_json
from harness.leaderboard.report import write_report
from harness.leaderboard.table import build

CHROMIUM = os.environ.get("HARNESS_CHROMIUM", "/usr/bin/chromium")
EVIL_NAME = "<script>alert(1)</script>"
EVIL_OUTPUT = "<img src=x onerror=\"window.__pwned=1;alert(2)\"> see <b>bold</b>"
LANGS = ["en", "de"]


def _stage_records(run: Path) -> None:
    """pairs/summary.json and train/train_metrics.json in the format the stages write, for the diagnostics plots."""
    for k in (1, 2):
        summary = {lang: {"alpha": 0.1 * k, "length_unit": "chars", "mean_chosen_length": 180.0 + 10 * k,
                          "mean_rejected_length": 200.0 - 5 * k, "pairs": 16} for lang in LANGS}
        atomic_write_json(run / f"iter_{k}" / "pairs" / "summary.json", summary)
        atomic_write_json(run / f"iter_{k}" / "pairs" / "_done.json", {"stage": "pairs"})
        hist = [{"step": s, "loss": 1.0 - 0.1 * s, "rewards/margins": 0.05 * s} for s in range(1, 5)]
        atomic_write_json(run / f"iter_{k}" / "train" / "train_metrics.json", {"log_history": hist})
        atomic_write_json(run / f"iter_{k}" / "train" / "_done.json", {"stage": "train"})


@pytest.fixture(scope="module")
def report_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    n = 30
    rng = np.random.default_rng(0)
    outs = {lang: [EVIL_OUTPUT if i == 0 else f"answer {i} " + "z" * int(rng.integers(10, 200)) for i in range(n)]
            for lang in LANGS}
    run = write_run(root, "evil", {label: {lang: simulate(n, p, 10 * j + i) for i, lang in enumerate(LANGS)}
                                   for j, (label, p) in enumerate([("pi_ref", 0.2), ("pi_0", 0.5), ("pi_1", 0.35),
                                                                   ("pi_2", 0.65)])}, outputs=outs)
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("run_name: evil",
                                                                                f"run_name: '{EVIL_NAME}'"))
    _stage_records(run)
    return run


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"the browser tests need Debian's chromium at {CHROMIUM} (apt-get install chromium; .ci/run "
                    "installs it) or HARNESS_CHROMIUM pointing at one")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                               args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                     "--disable-component-update", "--disable-sync", "--no-first-run"])
        yield b
        b.close()


def _open(browser, url: str):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    events = {"errors": [], "dialogs": []}
    page.on("console", lambda m: m.type == "error" and events["errors"].append(m.text))
    page.on("pageerror", lambda e: events["errors"].append(str(e)))

    def on_dialog(d):
        events["dialogs"].append(d.message)
        d.dismiss()

    page.on("dialog", on_dialog)
    page.goto(url)
    page.wait_for_load_state("load")
    return page, events


def _column(page, table, col: int) -> list[str]:
    return page.eval_on_selector(table, f"t => Array.from(t.tBodies[0].rows).map(r => r.cells[{col}].textContent)")


def test_report_in_a_real_browser(report_run, browser, tmp_path):
    written = write_report(report_run)
    assert {p.name for p in written["plots"]} == {"metrics.png", "on_target.png", "length_control.png",
                                                  "training.png"}
    assert all(p.stat().st_size > 5000 for p in written["plots"]) and written["pages"] == 4 * len(LANGS)
    page, events = _open(browser, written["index"].as_uri())
    assert page.locator("figure img").count() == 4  # embedded: the page is one file
    # the untrusted run name is shown as text, never run
    groups = _column(page, "table.sortable", 0)
    assert groups and all(EVIL_NAME in g for g in groups)
    # sorting: a click on "en WR" orders the rows by that column, descending then ascending
    header = page.locator("table.sortable th", has_text="en WR")
    col = page.eval_on_selector("table.sortable", "t => Array.from(t.tHead.rows[0].cells)"
                                                  ".findIndex(c => c.textContent === 'en WR')")
    before = _column(page, "table.sortable", 1)
    header.click()
    values = page.eval_on_selector("table.sortable", f"t => Array.from(t.tBodies[0].rows)"
                                                     f".map(r => parseFloat(r.cells[{col}].dataset.value))")
    assert values == sorted(values, reverse=True)
    after = _column(page, "table.sortable", 1)
    assert sorted(after) == sorted(before) and after != before
    header.click()
    values = page.eval_on_selector("table.sortable", f"t => Array.from(t.tBodies[0].rows)"
                                                     f".map(r => parseFloat(r.cells[{col}].dataset.value))")
    assert values == sorted(values)
    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10000
    if os.environ.get("HARNESS_SCREENSHOT_DIR"):  # the README's example picture
        shutil.copy(shot, Path(os.environ["HARNESS_SCREENSHOT_DIR"]) / "report.png")
    # a cell links to that model's outputs next to the reference and the preference; the evil output stays text
    page.locator("table.sortable a").first.click()
    page.wait_for_load_state("load")
    assert "outputs and judgements" in page.title()
    assert page.locator("img[src=x]").count() == 0 and page.locator("td b").count() == 0
    assert any(EVIL_OUTPUT in t for t in page.locator("td.text").all_text_contents())
    assert page.evaluate("window.__pwned === undefined")
    assert events["errors"] == [] and events["dialogs"] == []
    page.close()


def test_leaderboard_page_in_a_real_browser(report_run, browser, tmp_path):
    evil = tmp_path / "eval-evil"
    write_eval(evil / "eval", EVIL_NAME, {lang: simulate(30, 0.5, 99) for lang in LANGS})
    atomic_write_json(evil / "run.json", {"model": {"name": EVIL_NAME},
                                          "config": {"eval": {"temperature": 0.6, "top_p": 0.9, "max_tokens": 64,
                                                              "seed": 42}}})
    built = build([str(report_run), str(evil), "published"], tmp_path, "page")
    assert len(built.sections) == 2  # the eval folder is comparable with the run; the paper's rows are apart
    page, events = _open(browser, (tmp_path / "page.html").as_uri())
    assert page.locator("table.sortable").count() == 2
    labels = _column(page, "table.sortable[data-section='1']", 1)
    assert EVIL_NAME in labels and "pi_2" in labels
    page.locator("table.sortable[data-section='1'] th", has_text="Avg LC").click()
    col = page.eval_on_selector("table.sortable[data-section='1']", "t => Array.from(t.tHead.rows[0].cells)"
                                                                     ".findIndex(c => c.textContent === 'Avg LC')")
    values = page.eval_on_selector("table.sortable[data-section='1']", f"t => Array.from(t.tBodies[0].rows)"
                                   f".map(r => parseFloat(r.cells[{col}].dataset.value))")
    assert values == sorted(values, reverse=True)
    assert page.locator("script").count() == 1  # only the page's own sorting script
    assert events["errors"] == [] and events["dialogs"] == []
    page.close()
