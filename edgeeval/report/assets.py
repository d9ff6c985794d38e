"""The style sheet and the few lines of script that report.html carries inline (nothing is loaded)."""

CSS = """
:root { --ink: #1a1a1a; --muted: #555; --line: #d0d0d0; --band: #f4f5f7; --cand: #0072B2; --base: #D55E00; }
* { box-sizing: border-box; }
body { font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: var(--ink); margin: 0; background: #fff; }
header.top { background: #12355b; color: #fff; padding: 1.2rem 2rem 0.8rem; }
header.top h1 { margin: 0 0 0.3rem; font-size: 1.7rem; }
header.top p { margin: 0.2rem 0; }
header.top nav a { color: #dbe9ff; margin-right: 1.1rem; font-size: 0.95rem; }
main { max-width: 1240px; margin: 0 auto; padding: 0.5rem 2rem 3rem; }
section { margin-top: 2.2rem; }
h2 { border-bottom: 2px solid #12355b; padding-bottom: 0.2rem; font-size: 1.4rem; }
h3 { font-size: 1.15rem; margin-bottom: 0.4rem; }
a { color: #0b57a4; }
.finding { border-left: 6px solid #12355b; background: var(--band); padding: 0.8rem 1.1rem; margin: 1rem 0; }
.finding .message { font-size: 1.25rem; margin: 0.2rem 0 0.4rem; }
.finding p { margin: 0.3rem 0; }
.tally { display: flex; flex-wrap: wrap; gap: 0.5rem; margin: 0; padding: 0; list-style: none; }
.tally li { border: 1px solid var(--line); background: #fff; border-radius: 4px; padding: 0.15rem 0.6rem; }
.scoreboard { display: flex; flex-wrap: wrap; gap: 0.6rem; margin: 0.6rem 0 0.2rem; padding: 0; list-style: none; }
.scoreboard li { border: 2px solid #8a8a8a; border-left-width: 8px; background: #fff; border-radius: 4px;
                 padding: 0.3rem 0.7rem; min-width: 12rem; }
.scoreboard li a { color: var(--ink); text-decoration: none; font-weight: 600; }
.scoreboard li small { font-weight: 400; color: var(--muted); }
.scoreboard li.favours-candidate { border-color: var(--cand); }
.scoreboard li.favours-baseline { border-color: var(--base); }
.table-wrap { overflow-x: auto; }
table.confusion { width: auto; min-width: 28rem; }
.heat-1 { background: #e3eef8; } .heat-2 { background: #c4dbef; } .heat-3 { background: #94bfe2; }
.heat-4 { background: #5c9bd1; color: #fff; } .heat-5 { background: #1f63a8; color: #fff; }
table.facts th[scope="row"] { width: 11rem; background: var(--band); }
.note-box { border: 1px solid #e0b000; background: #fff8db; padding: 0.5rem 0.9rem; margin: 0.6rem 0; }
.privacy { font-size: 0.95rem; color: var(--muted); }
table { border-collapse: collapse; margin: 0.6rem 0 1rem; font-size: 0.95rem; width: 100%; }
th, td { border-bottom: 1px solid var(--line); padding: 0.3rem 0.55rem; text-align: left; vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
thead th { background: var(--band); }
th button { font: inherit; font-weight: 600; border: 0; background: none; padding: 0; cursor: pointer; color: inherit; }
th button::after { content: " ↕"; color: #999; }
th[aria-sort="ascending"] button::after { content: " ▲"; color: var(--ink); }
th[aria-sort="descending"] button::after { content: " ▼"; color: var(--ink); }
.mono, code { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, "DejaVu Sans Mono", monospace; font-size: 0.88em; }
.hash { word-break: break-all; }
.verdict { font-weight: 600; min-width: 9rem; }
.favours-candidate { color: var(--cand); }
.favours-baseline { color: var(--base); }
td.flagged { color: var(--base); font-weight: 600; }
.no-difference { color: var(--muted); }
.legend { display: flex; flex-wrap: wrap; gap: 1.2rem; font-size: 0.95rem; margin: 0.2rem 0 1rem; }
.swatch { display: inline-block; width: 0.9rem; height: 0.9rem; vertical-align: -0.1rem; margin-right: 0.3rem; }
.swatch.favours-candidate { background: var(--cand); }
.swatch.favours-baseline { background: var(--base); }
.swatch.no-difference { background: #6b6b6b; }
figure { margin: 0.5rem 0 1.5rem; }
svg.chart { max-width: 100%; height: auto; display: block; }
svg.chart text { fill: var(--ink); }
svg.chart .chart-title { font-weight: 700; font-size: 15px; }
svg.chart .hint, svg.chart .tick, svg.chart .axis-label { fill: #444; }
svg.chart .hint { font-style: italic; }
svg.chart .group { font-weight: 700; }
svg.chart .grid { stroke: #e3e3e3; }
svg.chart .axis { stroke: #333; }
svg.chart .zero { stroke: #111; stroke-width: 1.5; stroke-dasharray: 5 3; }
svg.chart .band { fill: var(--band); }
svg.chart .whisker { stroke: #111; stroke-width: 1.5; }
svg.chart a text { fill: #0b57a4; text-decoration: underline; }
.task-meta { color: var(--muted); font-size: 0.95rem; }
.search { display: flex; gap: 0.8rem; align-items: center; margin: 0.6rem 0 1rem; }
.search input { font: inherit; padding: 0.3rem 0.5rem; width: 18rem; }
details.example { border: 1px solid var(--line); border-radius: 4px; margin: 0.35rem 0; padding: 0.3rem 0.7rem; }
details.example > summary { cursor: pointer; }
details.example[open] { background: #fcfcfd; }
.right { color: #1b7f3b; font-weight: 600; }
.answer { font-weight: 600; }
.wrong { color: #b3261e; font-weight: 600; }
.badge { font-size: 0.8rem; border: 1px solid var(--line); border-radius: 3px; padding: 0 0.35rem; margin-left: 0.4rem; color: var(--muted); }
.answers { display: grid; grid-template-columns: 1fr 1fr; gap: 1rem; }
pre { white-space: pre-wrap; word-break: break-word; background: var(--band); padding: 0.5rem 0.7rem;
      border-radius: 4px; font-size: 0.88rem; max-height: 28rem; overflow: auto; margin: 0.3rem 0; }
@media print { details.example { break-inside: avoid; } header.top { background: none; color: #000; } }
"""

# Sortable tables and the search by example id; the page reads fine without them.
SCRIPT = """
(function () {
  function key(row, col) {
    var cell = row.cells[col], v = cell.getAttribute('data-v');
    if (v !== null && v !== '' && !isNaN(parseFloat(v))) return [0, parseFloat(v)];
    return [1, cell.textContent.trim().toLowerCase()];
  }
  document.querySelectorAll('table.sortable').forEach(function (table) {
    var head = table.tHead.rows[0];
    Array.prototype.forEach.call(head.cells, function (th) {
      var button = th.querySelector('button');
      if (!button) return;
      button.addEventListener('click', function () {
        var col = th.cellIndex, asc = th.getAttribute('aria-sort') !== 'ascending';
        Array.prototype.forEach.call(head.cells, function (c) { c.removeAttribute('aria-sort'); });
        th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
        var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = key(a, col), y = key(b, col);
          var r = x[0] !== y[0] ? x[0] - y[0] : (x[1] < y[1] ? -1 : x[1] > y[1] ? 1 : 0);
          return asc ? r : -r;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
  var search = document.getElementById('drill-search');
  if (!search) return;
  search.addEventListener('input', function () {
    var needle = search.value.trim().toLowerCase(), shown = 0;
    document.querySelectorAll('details.example').forEach(function (d) {
      var hit = !needle || d.getAttribute('data-id').toLowerCase().indexOf(needle) !== -1;
      d.hidden = !hit;
      shown += hit ? 1 : 0;
    });
    document.getElementById('drill-count').textContent = shown + ' shown';
  });
})();
"""
