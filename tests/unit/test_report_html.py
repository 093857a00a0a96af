"""The report files of a hand-made run folder: report.html self-contained and rendered by a real browser,
CSV columns numeric for pandas, every plot written."""

import re
import shutil
import subprocess

import pytest
from fake_run import make_run

from srlm.report_folder import write_report


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("run") / "run")
    write_report(run)
    return run


def test_report_html_is_self_contained(run_dir):
    page = (run_dir / "report.html").read_text()
    images = re.findall(r'<img src="([^"]+)"', page)
    assert len(images) == 3 and all(src.startswith("data:image/png;base64,") for src in images)
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing fetched from the network
    assert page.count("<table>") == 6 and "<tfoot>" in page  # the whole-run total stays under the sort
    assert "<strong>" in page and "Bold: the highest accuracy" in page


def test_csv_files_load_with_numeric_columns(run_dir):
    pd = pytest.importorskip("pandas", reason="pandas not installed (pip install -e .[dev])")
    acc = pd.read_csv(run_dir / "accuracy.csv")
    assert list(acc.method) == ["tiny base", "base + SFT", "base + SFT + RL", "base + RL"]
    for col in ("mean", "se", "n_problems", "format_rate", "truncation_rate", "tokens_per_s"):
        assert pd.api.types.is_numeric_dtype(acc[col]), col
    assert acc["mean"].tolist() == pytest.approx([0.0, 25.0, 75.0, 18.75])
    gains = pd.read_csv(run_dir / "gains.csv")
    assert pd.api.types.is_float_dtype(gains["difference"]) and pd.api.types.is_float_dtype(gains["se"])
    assert gains[gains.method == "base + SFT + RL"]["difference"].iloc[0] == pytest.approx(50.0)
    cost = pd.read_csv(run_dir / "cost.csv")
    assert cost["wall_seconds"].tolist() == [100.0, 20.0, 50.0, 40.0]  # per stage, the shared one once
    totals = pd.read_csv(run_dir / "pipeline_cost.csv")
    assert totals["wall_seconds"].tolist() == [100.0, 120.0, 170.0, 140.0]


# On page load: count the images that decoded, then sort the accuracy table by its benchmark column
# (descending, one click) and record the first column's order.
PROBE = """<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute("data-images", ok + "/" + imgs.length);
  var table = document.querySelector("table");
  table.querySelectorAll("th")[1].click();
  var order = Array.prototype.map.call(table.tBodies[0].rows, function (r) { return r.cells[0].textContent; });
  document.body.setAttribute("data-order", order.join("|"));
});
</script></body>"""

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--virtual-time-budget=10000", "--dump-dom"]


def test_report_html_renders_in_headless_chromium_with_every_image(run_dir, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium not installed (apt-get install chromium)")
    page = tmp_path / "probe.html"
    page.write_text((run_dir / "report.html").read_text().replace("</body>", PROBE))
    profile = tmp_path / "profile"
    profile.mkdir()
    dom = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", page.as_uri()],
                         capture_output=True, text=True, timeout=180).stdout
    assert 'data-images="3/3"' in dom, dom[:500]
    order = re.search(r'data-order="([^"]*)"', dom).group(1).split("|")
    assert order == ["base + SFT + RL", "base + SFT", "base + RL", "tiny base"]  # sorted by accuracy, descending
