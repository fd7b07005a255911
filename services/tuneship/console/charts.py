"""Loss curves as inline SVG, drawn on the server (no chart library, no script)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

from markupsafe import Markup, escape

WIDTH, HEIGHT = 640, 260
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 16, 40
STYLES = {"loss": ("#1f5fbf", ""), "eval_loss": ("#b34700", "6 4")}
"""Colour and dash of each curve: the dash tells them apart without colour too."""


def _ticks(low: float, high: float, count: int = 4) -> list[float]:
    if high <= low:
        return [low]
    return [low + (high - low) * i / count for i in range(count + 1)]


_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def _power_of_ten(high: float) -> tuple[float, str]:
    """What to divide ticks up to ``high`` by so that they read as short numbers (below
    10), and the note that says so in the axis title ("" when they are short already).
    A KLD is often 0.0004: "0.000412" is wider than the room left of the axis."""
    if high <= 0 or 1 <= high < 10:
        return 1.0, ""
    exponent = math.floor(math.log10(high))
    power = f"10{str(exponent).translate(_SUPERSCRIPT)}"
    return 10.0**exponent, f" (\N{MULTIPLICATION SIGN}{power})"


def _short(value: float) -> str:
    """A tick below 10 in at most four characters: 2.06, 0.26, 4.6, 0."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


def loss_chart(curves: dict[str, list[tuple[float, float]]], title: str = "Loss") -> Markup:
    """An SVG line chart of ``curves`` (name → (step, value) points), with axes, a
    legend and a text description for screen readers; "" when there is no point."""
    drawn = {name: points for name, points in curves.items() if points}
    if not drawn:
        return Markup("")
    steps = [s for points in drawn.values() for s, _ in points]
    values = [v for points in drawn.values() for _, v in points]
    x0, x1 = min(steps), max(steps)
    y0, y1 = min(min(values), 0.0), max(values)
    x1 = x1 if x1 > x0 else x0 + 1
    y1 = y1 if y1 > y0 else y0 + 1
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(step: float) -> float:
        return LEFT + (step - x0) / (x1 - x0) * plot_w

    def y(value: float) -> float:
        return TOP + (1 - (value - y0) / (y1 - y0)) * plot_h

    summary = "; ".join(
        f"{name}: {len(points)} points, first {points[0][1]:.4g} at step {points[0][0]:g}, "
        f"last {points[-1][1]:.4g} at step {points[-1][0]:g}"
        for name, points in drawn.items()
    )
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-labelledby="chart-title chart-desc" xmlns="http://www.w3.org/2000/svg">',
        f'<title id="chart-title">{escape(title)}</title>',
        f'<desc id="chart-desc">{escape(summary)}</desc>',
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{LEFT + plot_w}" y2="{TOP + plot_h}" '
        'stroke="#555"/>',
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + plot_h}" stroke="#555"/>',
    ]
    for value in _ticks(y0, y1):
        parts.append(f'<text x="{LEFT - 6}" y="{y(value) + 4:.1f}" text-anchor="end" '
                     f'font-size="11" fill="#333">{value:.3g}</text>')  # fmt: skip
        parts.append(f'<line x1="{LEFT}" y1="{y(value):.1f}" x2="{LEFT + plot_w}" '
                     f'y2="{y(value):.1f}" stroke="#ddd"/>')  # fmt: skip
    for step in _ticks(x0, x1):
        parts.append(f'<text x="{x(step):.1f}" y="{TOP + plot_h + 16}" text-anchor="middle" '
                     f'font-size="11" fill="#333">{step:.0f}</text>')  # fmt: skip
    parts.append(f'<text x="{LEFT + plot_w / 2:.0f}" y="{HEIGHT - 4}" text-anchor="middle" '
                 'font-size="12" fill="#333">step</text>')  # fmt: skip
    for index, (name, points) in enumerate(drawn.items()):
        colour, dash = STYLES.get(name, ("#333", "2 2"))
        path = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in points)
        dashed = f' stroke-dasharray="{dash}"' if dash else ""
        parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" '
                     f'stroke-width="2"{dashed}/>')  # fmt: skip
        if len(points) == 1:
            s, v = points[0]
            parts.append(f'<circle cx="{x(s):.1f}" cy="{y(v):.1f}" r="3" fill="{colour}"/>')
        ly = TOP + 12 + 16 * index
        parts.append(f'<line x1="{LEFT + plot_w - 110}" y1="{ly - 4}" x2="{LEFT + plot_w - 86}" '
                     f'y2="{ly - 4}" stroke="{colour}" stroke-width="2"{dashed}/>')  # fmt: skip
        parts.append(f'<text x="{LEFT + plot_w - 80}" y="{ly}" font-size="12" '
                     f'fill="#222">{escape(name)}</text>')  # fmt: skip
    parts.append("</svg>")
    return Markup("".join(parts))


class QualityPoint(Protocol):
    """What the quality chart reads of a report row (``views.QualityRow``)."""

    @property
    def quant_type(self) -> str: ...
    @property
    def size_mb(self) -> float: ...
    @property
    def kld_mean(self) -> float: ...
    @property
    def baseline(self) -> bool: ...
    @property
    def recommended(self) -> bool: ...


def quality_chart(rows: Sequence[QualityPoint], title: str = "Quality per quant type") -> Markup:
    """Size against KLD of each quantized GGUF (the baseline left out), every point
    labelled with its type; the recommended one drawn larger, ringed and labelled
    "recommended" (not by colour alone). "" without a quantized row."""
    points = [r for r in rows if not r.baseline]
    if not points:
        return Markup("")
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    x1 = max(r.size_mb for r in points) * 1.1 or 1.0
    y1 = max(r.kld_mean for r in points) * 1.15 or 1.0
    scale, note = _power_of_ten(y1)

    def x(size: float) -> float:
        return LEFT + size / x1 * plot_w

    def y(kld: float) -> float:
        return TOP + (1 - kld / y1) * plot_h

    summary = "; ".join(
        f"{r.quant_type}: {r.size_mb:.1f} MB, KLD {r.kld_mean:.4f}"
        + (" (recommended)" if r.recommended else "")
        for r in points
    )
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-labelledby="quality-title quality-desc" xmlns="http://www.w3.org/2000/svg">',
        f'<title id="quality-title">{escape(title)}</title>',
        f'<desc id="quality-desc">{escape(summary)}</desc>',
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{LEFT + plot_w}" y2="{TOP + plot_h}" '
        'stroke="#555"/>',
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + plot_h}" stroke="#555"/>',
        f'<text x="{LEFT + plot_w / 2:.0f}" y="{HEIGHT - 4}" text-anchor="middle" '
        'font-size="12" fill="#333">size (MB)</text>',
        f'<text x="14" y="{TOP + plot_h / 2:.0f}" text-anchor="middle" font-size="12" '
        f'fill="#333" transform="rotate(-90 14 {TOP + plot_h / 2:.0f})">mean KLD{note}</text>',
    ]
    for value in _ticks(0.0, y1):
        parts.append(f'<text x="{LEFT - 6}" y="{y(value) + 4:.1f}" text-anchor="end" '
                     f'font-size="11" fill="#333">{_short(value / scale)}</text>')  # fmt: skip
    for value in _ticks(0.0, x1):
        parts.append(f'<text x="{x(value):.1f}" y="{TOP + plot_h + 16}" text-anchor="middle" '
                     f'font-size="11" fill="#333">{value:.3g}</text>')  # fmt: skip
    for r in points:
        cx, cy = x(r.size_mb), y(r.kld_mean)
        label = f"{r.quant_type} (recommended)" if r.recommended else r.quant_type
        if r.recommended:
            parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="9" fill="none" '
                         'stroke="#17692d" stroke-width="2"/>')  # fmt: skip
        parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="{5 if r.recommended else 4}" '
                     f'fill="{"#17692d" if r.recommended else "#1f5fbf"}"/>')  # fmt: skip
        anchor = "end" if cx > LEFT + plot_w * 0.7 else "start"
        dx = -12 if anchor == "end" else 12
        weight = ' font-weight="700"' if r.recommended else ""
        parts.append(f'<text x="{cx + dx:.1f}" y="{cy + 4:.1f}" text-anchor="{anchor}" '
                     f'font-size="12" fill="#222"{weight}>{escape(label)}</text>')  # fmt: skip
    parts.append("</svg>")
    return Markup("".join(parts))


class TimedStage(Protocol):
    """What the timeline reads of a stage (``client.StageInfo``)."""

    @property
    def name(self) -> str: ...
    @property
    def phase(self) -> str: ...
    @property
    def started(self) -> float: ...
    @property
    def finished(self) -> float: ...


BAR_STYLE = {"succeeded": ("#17692d", ""), "failed": ("#a3001b", ""),
             "running": ("#1f5fbf", "4 2"), "cancelled": ("#7a5300", "2 2")}  # fmt: skip


def timeline_chart(stages: Sequence[TimedStage], now: float) -> Markup:
    """One bar per stage that started, from its start to its end (to ``now`` while it
    runs), on one time axis; each bar is labelled with the stage, its phase and its
    length. "" when no stage started."""
    shown = [s for s in stages if s.started]
    if not shown:
        return Markup("")
    row_h, label_w = 26, 150
    height = TOP + row_h * len(shown) + 28
    start = min(s.started for s in shown)
    end = max((s.finished or now) for s in shown)
    span = max(end - start, 1e-3)
    plot_w = WIDTH - label_w - RIGHT

    def x(stamp: float) -> float:
        return label_w + (stamp - start) / span * plot_w

    summary = "; ".join(
        f"{s.name} {s.phase}, {(s.finished or now) - s.started:.1f} s" for s in shown
    )
    parts = [
        f'<svg class="chart timeline" viewBox="0 0 {WIDTH} {height}" role="img" '
        f'aria-labelledby="timeline-title timeline-desc" xmlns="http://www.w3.org/2000/svg">',
        '<title id="timeline-title">Stage timeline</title>',
        f'<desc id="timeline-desc">{escape(summary)}</desc>',
    ]
    for index, s in enumerate(shown):
        top = TOP + index * row_h
        colour, dash = BAR_STYLE.get(s.phase, ("#555", "1 2"))
        left, right = x(s.started), max(x(s.finished or now), x(s.started) + 2)
        seconds = (s.finished or now) - s.started
        parts.append(f'<text x="4" y="{top + 15}" font-size="12" fill="#222">'
                     f'{escape(s.name)} ({escape(s.phase)})</text>')  # fmt: skip
        dashed = f' stroke-dasharray="{dash}"' if dash else ""
        parts.append(f'<rect x="{left:.1f}" y="{top + 4}" width="{right - left:.1f}" '
                     f'height="16" fill="{colour}" fill-opacity="0.25" stroke="{colour}"'
                     f"{dashed}/>")  # fmt: skip
        parts.append(f'<text x="{min(right + 4, WIDTH - 60):.1f}" y="{top + 16}" font-size="11" '
                     f'fill="#333">{seconds:.1f} s</text>')  # fmt: skip
    axis = TOP + row_h * len(shown) + 4
    parts.append(f'<line x1="{label_w}" y1="{axis}" x2="{label_w + plot_w}" y2="{axis}" '
                 'stroke="#555"/>')  # fmt: skip
    parts.append(f'<text x="{label_w}" y="{axis + 16}" font-size="11" fill="#333">0 s</text>')
    parts.append(f'<text x="{label_w + plot_w}" y="{axis + 16}" font-size="11" fill="#333" '
                 f'text-anchor="end">{span:.1f} s</text>')  # fmt: skip
    parts.append("</svg>")
    return Markup("".join(parts))
