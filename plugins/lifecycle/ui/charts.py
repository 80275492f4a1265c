"""Inline SVG for the Journeys page, drawn on the server: no JavaScript, no build step.

Every number a chart draws is also printed in the chart (and in the table beside it), so the page reads
the same without colour and in a screenshot."""

from __future__ import annotations

from markupsafe import Markup, escape

STAGES = ("sent", "delivered", "opened", "clicked", "converted")
COLOURS = {"sent": "#4c6ef5", "delivered": "#15aabf", "opened": "#40c057", "clicked": "#fab005",
           "converted": "#e8590c"}
WIDTH, LABEL, BAR_H, GAP = 720, 190, 13, 3


def _label(row: dict) -> str:
    step = row["step"] or "(no click: unattributed)"
    return f"{step} · {row['variant']}" if row.get("variant") else step


def funnel_svg(journey: str, rows: list[dict]) -> Markup:
    """One group of bars per step (and variant): sent, delivered, opened, clicked, converted, each as
    long as its share of the group's sends, labelled with the count and that share."""
    steps = [r for r in rows if r["step"] is not None]
    if not steps:
        return Markup('<p class="empty">No messages sent in this period.</p>')
    scale = max(max(r["sent"] for r in steps), 1)
    span = WIDTH - LABEL - 120
    group_h = len(STAGES) * (BAR_H + GAP) + 14
    height = len(steps) * group_h + 28
    out = [f'<svg class="funnel" role="img" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" '
           f'data-journey="{escape(journey)}" xmlns="http://www.w3.org/2000/svg">',
           f"<title>Funnel of {escape(journey)} per step and variant</title>"]
    for i, stage in enumerate(STAGES):  # legend
        x = LABEL + i * 100
        out.append(f'<rect x="{x}" y="4" width="10" height="10" fill="{COLOURS[stage]}"/>'
                   f'<text x="{x + 14}" y="13" class="legend">{stage}</text>')
    y = 28
    for row in steps:
        out.append(f'<text x="0" y="{y + 11}" class="step">{escape(_label(row))}</text>')
        for stage in STAGES:
            value = row.get(stage) or 0
            width = span * value / scale
            share = f" ({value / row['sent']:.0%})" if row["sent"] and stage != "sent" else ""
            out.append(
                f'<g data-step="{escape(row["step"])}" data-variant="{escape(row.get("variant") or "")}" '
                f'data-metric="{stage}" data-value="{value}">'
                f'<rect x="{LABEL}" y="{y}" width="{width:.1f}" height="{BAR_H}" fill="{COLOURS[stage]}" rx="2"/>'
                f'<text x="{LABEL + width + 4:.1f}" y="{y + 10}" class="value">{stage} {value:,}{share}</text></g>')
            y += BAR_H + GAP
        y += 14
    out.append("</svg>")
    return Markup("".join(out))


def interval_svg(name: str, value: float | None, ci: tuple | list | None, unit: str = "pp",
                 scale: float = 100.0) -> Markup:
    """A point with its 95% interval on an axis that always shows zero: excludes zero or not, at a glance."""
    if value is None or not ci:
        return Markup('<span class="empty">not enough data</span>')
    lo, hi = (float(c) for c in ci)
    v = float(value)
    left, right = min(lo, 0.0, v), max(hi, 0.0, v)
    pad = (right - left) * 0.1 or 1.0
    left, right = left - pad, right + pad
    w, h, m = 320, 40, 10

    def x(t: float) -> float:
        return m + (w - 2 * m) * (t - left) / (right - left)

    colour = "#2b8a3e" if lo > 0 else ("#c92a2a" if hi < 0 else "#868e96")
    fmt = (lambda t: f"{t * scale:+.1f} {unit}") if unit != "€" else (lambda t: f"{'+' if t >= 0 else '−'}€{abs(t):,.2f}")
    return Markup(
        f'<svg class="interval" role="img" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
        f'data-name="{escape(name)}" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{escape(name)}: {escape(fmt(v))}, 95% CI {escape(fmt(lo))} to {escape(fmt(hi))}</title>"
        f'<line x1="{x(0):.1f}" y1="4" x2="{x(0):.1f}" y2="28" stroke="#adb5bd" stroke-dasharray="3,2"/>'
        f'<line x1="{x(lo):.1f}" y1="16" x2="{x(hi):.1f}" y2="16" stroke="{colour}" stroke-width="3"/>'
        f'<circle cx="{x(v):.1f}" cy="16" r="5" fill="{colour}"/>'
        f'<text x="{x(lo):.1f}" y="38" class="tick" text-anchor="middle">{escape(fmt(lo))}</text>'
        f'<text x="{x(hi):.1f}" y="38" class="tick" text-anchor="middle">{escape(fmt(hi))}</text></svg>')
