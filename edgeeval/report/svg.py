"""Charts as inline SVG, drawn by hand from the result tables: no plotting library, no external fonts."""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

WIDTH = 960
FONT = 13
ROW = 24
# Okabe-Ito: distinguishable with the common colour-vision deficiencies.
ARM_COLOURS = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000", "#F0E442"]
FAVOURS_CANDIDATE = "#0072B2"
FAVOURS_BASELINE = "#D55E00"
NO_DIFFERENCE = "#6b6b6b"


def nice_ticks(low: float, high: float, count: int = 6) -> list[float]:
    """Round tick values (steps of 1, 2 or 5 times a power of ten) covering [low, high]."""
    span = high - low if high > low else 1.0
    raw = span / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(low / step + 1e-9) * step
    ticks, value = [], first
    while value <= high + step * 1e-6:
        ticks.append(round(value, 10) + 0.0)
        value += step
    if ticks[-1] < high - 1e-9:
        ticks.append(round(value, 10))
    return ticks


def _tick_label(value: float) -> str:
    text = f"{value:.2f}".rstrip("0").rstrip(".") if value else "0"
    return text.replace("-", "−")


class Scale:
    """Maps data values onto an x range in the drawing."""

    def __init__(self, low: float, high: float, left: float, right: float):
        self.ticks = nice_ticks(low, high)
        self.low, self.high = self.ticks[0], self.ticks[-1]
        self.left, self.right = left, right

    def __call__(self, value: float) -> float:
        return self.left + (value - self.low) / (self.high - self.low) * (self.right - self.left)


def _text(x: float, y: float, text: str, anchor: str = "start", cls: str = "") -> str:
    klass = f' class="{cls}"' if cls else ""
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{klass}>{escape(text)}</text>'


def _clip(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[: chars - 1] + "…"


def _open_svg(svg_id: str, height: float, title: str, description: str, cls: str) -> list[str]:
    return [
        f'<svg id="{escape(svg_id)}" class="chart {cls}" viewBox="0 0 {WIDTH} {height:.0f}" width="{WIDTH}" '
        f'height="{height:.0f}" role="img" aria-labelledby="{escape(svg_id)}-t {escape(svg_id)}-d" '
        f'font-size="{FONT}">',
        f'<title id="{escape(svg_id)}-t">{escape(title)}</title>',
        f'<desc id="{escape(svg_id)}-d">{escape(description)}</desc>',
        _text(0, 18, title, cls="chart-title"),
    ]


def _axis(scale: Scale, top: float, bottom: float, label: str) -> list[str]:
    parts = []
    for tick in scale.ticks:
        x = scale(tick)
        parts.append(f'<line x1="{x:.1f}" y1="{top:.1f}" x2="{x:.1f}" y2="{bottom:.1f}" class="grid"/>')
        parts.append(_text(x, bottom + 16, _tick_label(tick), "middle", "tick"))
    parts.append(f'<line x1="{scale.left:.1f}" y1="{bottom:.1f}" x2="{scale.right:.1f}" y2="{bottom:.1f}" class="axis"/>')
    parts.append(_text((scale.left + scale.right) / 2, bottom + 36, label, "middle", "axis-label"))
    return parts


@dataclass(frozen=True)
class ForestRow:
    group: str
    """Rows are drawn under a heading per group (the metric)."""
    label: str
    delta: float
    low: float
    high: float
    note: str
    """Printed right of the plot: the numbers."""
    colour: str
    significant: bool
    """Drawn as a filled point; others are hollow, so the plot also reads in grey print."""
    tooltip: str
    href: str = ""


def forest_plot(svg_id: str, title: str, description: str, rows: list[ForestRow], axis_label: str,
                left_hint: str, right_hint: str, note_title: str) -> str:
    """Paired differences with their CIs, one row each, a zero line, grouped under headings."""
    label_right, plot_left, plot_right, note_left = 230, 245, 690, 705
    drawn = [r for r in rows if not math.isnan(r.delta)]
    low = min([-0.1] + [r.low for r in drawn if not math.isnan(r.low)])
    high = max([0.1] + [r.high for r in drawn if not math.isnan(r.high)])
    scale = Scale(low, high, plot_left, plot_right)
    groups = list(dict.fromkeys(r.group for r in rows))
    top = 56
    height = top + ROW * (len(rows) + len(groups)) + 50
    parts = _open_svg(svg_id, height, title, description, "forest")
    parts.append(_text(plot_left, 44, f"◀ {left_hint}", "start", "hint"))
    parts.append(_text(plot_right, 44, f"{right_hint} ▶", "end", "hint"))
    parts.append(_text(note_left, 44, note_title, "start", "hint"))
    y = top
    bottom = top + ROW * (len(rows) + len(groups))
    parts += _axis(scale, top, bottom, axis_label)
    parts.append(f'<line x1="{scale(0):.1f}" y1="{top:.1f}" x2="{scale(0):.1f}" y2="{bottom:.1f}" class="zero"/>')
    for group in groups:
        parts.append(_text(8, y + 17, group, "start", "group"))
        y += ROW
        for index, row in enumerate(r for r in rows if r.group == group):
            parts.append(_forest_row(row, y, scale, label_right, note_left, index % 2 == 1))
            y += ROW
    parts.append("</svg>")
    return "\n".join(parts)


def _forest_row(row: ForestRow, y: float, scale: Scale, label_right: float, note_left: float, shaded: bool) -> str:
    mid = y + ROW / 2
    parts = [f'<g class="row"><title>{escape(row.tooltip)}</title>']
    if shaded:
        parts.append(f'<rect x="0" y="{y:.1f}" width="{WIDTH}" height="{ROW}" class="band"/>')
    label = _text(label_right, mid + 4.5, _clip(row.label, 34), "end", "row-label")
    parts.append(f'<a href="{escape(row.href)}">{label}</a>' if row.href else label)
    if not math.isnan(row.delta):
        x0, x1, x = scale(row.low), scale(row.high), scale(row.delta)
        parts.append(f'<line x1="{x0:.1f}" y1="{mid:.1f}" x2="{x1:.1f}" y2="{mid:.1f}" stroke="{row.colour}" stroke-width="2.5"/>')
        for end in (x0, x1):
            parts.append(f'<line x1="{end:.1f}" y1="{mid - 5:.1f}" x2="{end:.1f}" y2="{mid + 5:.1f}" stroke="{row.colour}" stroke-width="2"/>')
        fill = row.colour if row.significant else "#ffffff"
        parts.append(f'<circle cx="{x:.1f}" cy="{mid:.1f}" r="5.5" fill="{fill}" stroke="{row.colour}" '
                     'stroke-width="2" class="point"/>')
    parts.append(_text(note_left, mid + 4.5, row.note, "start", "note"))
    parts.append("</g>")
    return "".join(parts)


@dataclass(frozen=True)
class Bar:
    series: int
    """Index into the chart's series (its colour and legend entry)."""
    value: float
    low: float
    high: float
    tooltip: str


def bar_chart(svg_id: str, title: str, description: str, groups: list[tuple[str, list[Bar]]],
              series: list[str], axis_label: str, colours: list[str] | None = None) -> str:
    """Horizontal bars with CI whiskers, one bar per series within each group."""
    colours = colours or [ARM_COLOURS[i % len(ARM_COLOURS)] for i in range(len(series))]
    label_right, plot_left, plot_right = 190, 200, 840
    bar, gap, group_gap = 16, 3, 14
    values = [b.high if not math.isnan(b.high) else b.value for _, bars in groups for b in bars]
    high = max([1.0] + [v for v in values if not math.isnan(v)])
    scale = Scale(0.0, high, plot_left, plot_right)
    legend_rows = math.ceil(len(series) / 3)
    top = 34 + 20 * legend_rows
    body = sum(len(bars) * (bar + gap) + group_gap for _, bars in groups)
    height = top + body + 50
    parts = _open_svg(svg_id, height, title, description, "bars")
    y: float
    for index, name in enumerate(series):
        x, y = 8 + (index % 3) * 310, 28 + 20 * (index // 3)
        parts.append(f'<rect x="{x}" y="{y:.1f}" width="12" height="12" fill="{colours[index]}"/>')
        parts.append(_text(x + 18, y + 11, _clip(name, 40), cls="legend"))
    parts += _axis(scale, top, top + body, axis_label)
    y = top + group_gap / 2
    for label, bars in groups:
        group_height = len(bars) * (bar + gap)
        parts.append(_text(label_right - 4, y + group_height / 2 + 4, _clip(label, 26), "end", "row-label"))
        for item in bars:
            parts.append(_bar(item, y, bar, scale, colours[item.series]))
            y += bar + gap
        y += group_gap
    parts.append("</svg>")
    return "\n".join(parts)


def _bar(item: Bar, y: float, height: float, scale: Scale, colour: str) -> str:
    parts = [f'<g class="bar"><title>{escape(item.tooltip)}</title>']
    if math.isnan(item.value):
        parts.append(_text(scale.left + 4, y + height - 4, "no data", cls="note"))
        return "".join(parts) + "</g>"
    width = max(scale(item.value) - scale.left, 0.5)
    parts.append(f'<rect x="{scale.left:.1f}" y="{y:.1f}" width="{width:.1f}" height="{height}" fill="{colour}"/>')
    end = scale(item.value)
    if not (math.isnan(item.low) or math.isnan(item.high)):
        x0, x1, mid = scale(item.low), scale(item.high), y + height / 2
        parts.append(f'<line x1="{x0:.1f}" y1="{mid:.1f}" x2="{x1:.1f}" y2="{mid:.1f}" class="whisker"/>')
        parts.append(f'<line x1="{x1:.1f}" y1="{mid - 4:.1f}" x2="{x1:.1f}" y2="{mid + 4:.1f}" class="whisker"/>')
        end = max(end, x1)
    parts.append(_text(end + 5, y + height - 3.5, f"{item.value:.3f}", cls="value"))
    parts.append("</g>")
    return "".join(parts)
