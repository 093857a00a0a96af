"""`report.html`: the report's sections and plots as one self-contained page (pure: data in, text out).

Plots are embedded as base64 data URIs and the table sorting is a few lines of inline JavaScript, so the
file opens offline, can be mailed or attached as is, and never loads anything from the network.
"""

from __future__ import annotations

import base64
import html
import re

from srlm.report_tables import Section

_BOLD = re.compile(r"\*\*(.+?)\*\*")
_CODE = re.compile(r"`([^`]+)`")

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 75em; color: #222; padding: 0 1em; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
th { background: #f2f2f2; cursor: pointer; user-select: none; }
th[aria-sort="ascending"]::after { content: " \\25B2"; }
th[aria-sort="descending"]::after { content: " \\25BC"; }
tfoot td { font-weight: 600; background: #fafafa; }
p.note { color: #555; font-size: 0.9em; max-width: 60em; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
"""

# Click a column header to sort by it (again to reverse). Cells sort by their leading number when both
# have one ("21.6 ± 1.0" by 21.6, "1,500" by 1500), else as text; non-numbers go after numbers.
SCRIPT = """
function srlmKey(text) {
  var m = text.replace(/,/g, "").match(/^\\s*[+-]?\\d+(\\.\\d+)?/);
  return m ? parseFloat(m[0]) : null;
}
function srlmSort(th) {
  var table = th.closest("table"), body = table.tBodies[0], col = th.cellIndex;
  var dir = th.getAttribute("aria-sort") === "descending" ? 1 : -1;
  table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("aria-sort"); });
  th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
  var rows = Array.prototype.slice.call(body.rows);
  rows.sort(function (a, b) {
    var x = a.cells[col].textContent, y = b.cells[col].textContent, kx = srlmKey(x), ky = srlmKey(y);
    if (kx !== null && ky !== null) return dir * (kx - ky);
    if (kx !== null) return -1;
    if (ky !== null) return 1;
    return dir * x.localeCompare(y);
  });
  rows.forEach(function (r) { body.appendChild(r); });
}
document.querySelectorAll("th").forEach(function (th) {
  th.addEventListener("click", function () { srlmSort(th); });
});
"""


def inline(text: str) -> str:
    """Escape `text` for HTML, keeping the report's **bold** and `code` marks."""
    text = html.escape(text)
    return _CODE.sub(r"<code>\1</code>", _BOLD.sub(r"<strong>\1</strong>", text))


def table_html(table: list[list[str]], total_rows: int = 0) -> str:
    head, *body = table
    foot = body[len(body) - total_rows:] if total_rows else []
    body = body[: len(body) - total_rows] if total_rows else body

    def tr(cells, tag="td"):
        return "<tr>" + "".join(f"<{tag}>{inline(c)}</{tag}>" for c in cells) + "</tr>"

    parts = ["<table>", "<thead>" + tr(head, "th") + "</thead>", "<tbody>"] + [tr(r) for r in body] + ["</tbody>"]
    if foot:
        parts += ["<tfoot>"] + [tr(r) for r in foot] + ["</tfoot>"]
    return "\n".join(parts + ["</table>"])


def png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def render(title: str, sections: list[Section], images: list[tuple[str, str]] = ()) -> str:
    """The page: every section (table, note, items), then the plots as (caption, data URI) figures."""
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{html.escape(title)}</title>", f"<style>{STYLE}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    for sec in sections:
        parts.append(f"<h2>{inline(sec.title)}</h2>")
        if sec.table is not None:
            parts.append(table_html(sec.table, sec.total_rows))
        if sec.note:
            parts.append(f'<p class="note">{inline(sec.note)}</p>')
        if sec.items:
            parts.append("<ul>" + "".join(f"<li>{inline(i)}</li>" for i in sec.items) + "</ul>")
    if images:
        parts.append("<h2>Plots</h2>")
        for caption, uri in images:
            parts.append(f'<figure><img src="{uri}" alt="{html.escape(caption)}">'
                         f"<figcaption>{inline(caption)}</figcaption></figure>")
    parts += [f"<script>{SCRIPT}</script>", "</body></html>"]
    return "\n".join(parts) + "\n"
