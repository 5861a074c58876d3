"""The merge report as a picture: one bar per module, its relative error ‖ΔW_out − T‖/‖T‖.

Plain SVG text (no plotting library), so it renders the same in gradio 3 and 4 and in any
browser; hovering a bar shows the module, its output rank and its error.
"""
from __future__ import annotations

import html
import math
from typing import Sequence

WIDTH, HEIGHT = 760, 240
LEFT, RIGHT, TOP, BOTTOM = 58, 12, 30, 42
PART_COLORS = {"text encoder": "#e07b39", "UNet down": "#3b7dd8", "UNet mid": "#7a52c7", "UNet up": "#2a9d8f",
               "other": "#888888"}


def part_of(module: str) -> str:
    """Which part of the model a kohya module name belongs to (for the bar colour)."""
    if module.startswith(("lora_te_", "lora_te1_", "lora_te2_")):
        return "text encoder"
    rest = module[len("lora_unet_"):] if module.startswith("lora_unet_") else ""
    if rest.startswith(("down_blocks_", "input_blocks_")):
        return "UNet down"
    if rest.startswith(("mid_block", "middle_block")):
        return "UNet mid"
    if rest.startswith(("up_blocks_", "output_blocks_")):
        return "UNet up"
    return "other"


def _ticks(top: float) -> list[float]:
    """Three to six round tick values from 0 to at least `top`."""
    if top <= 0 or not math.isfinite(top):
        return [0.0, 1.0]
    step = 10 ** math.floor(math.log10(top / 4))
    for mult in (1, 2, 2.5, 5, 10):
        if top / (step * mult) <= 5:
            step *= mult
            break
    n = math.ceil(top / step - 1e-9)
    return [round(i * step, 12) for i in range(n + 1)]


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 0.01:
        return f"{v:.3g}"
    return f"{v:.1e}"


def error_plot_svg(rows: Sequence, title: str = "relative error per module") -> str:
    """An SVG bar chart of report rows (objects with .module, .rank, .error, or such tuples)."""
    items = [(r.module, r.rank, r.error) if hasattr(r, "module") else tuple(r) for r in rows]
    if not items:
        return '<svg class="ljl-error-plot" xmlns="http://www.w3.org/2000/svg" width="300" height="40">' \
               '<text x="8" y="24" font-size="13">no modules</text></svg>'
    finite = [e for _, _, e in items if math.isfinite(e)]
    peak = max(finite, default=0.0)
    ticks = _ticks(peak)
    top = ticks[-1] if ticks[-1] > 0 else 1.0
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = plot_w / len(items)
    bar_w = max(step * 0.85, 0.6)
    out = [f'<svg class="ljl-error-plot" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
           f'width="100%" style="max-width:{WIDTH}px" role="img" aria-label="{html.escape(title)}" '
           'font-family="sans-serif" font-size="11">',
           f'<text x="{LEFT}" y="16" font-size="13" font-weight="bold">{html.escape(title)}</text>']
    for t in ticks:
        y = TOP + plot_h - t / top * plot_h
        out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#8884" />')
        out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
    for i, (module, rank, err) in enumerate(items):
        value = err if math.isfinite(err) else top
        h = max(value / top * plot_h, 0.0)
        x = LEFT + i * step
        color = PART_COLORS[part_of(module)] if math.isfinite(err) else "#d62828"
        label = html.escape(f"{module}\nrank {rank}\nerror {err:.4g}")
        out.append(f'<rect class="ljl-bar" x="{x:.2f}" y="{TOP + plot_h - h:.2f}" width="{bar_w:.2f}" '
                   f'height="{max(h, 0.5):.2f}" fill="{color}"><title>{label}</title></rect>')
    mean = sum(finite) / len(finite) if finite else 0.0
    y_mean = TOP + plot_h - mean / top * plot_h
    out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y_mean:.1f}" y2="{y_mean:.1f}" '
               'stroke="#d62828" stroke-dasharray="5,3" />')
    out.append(f'<text x="{WIDTH - RIGHT}" y="{y_mean - 4:.1f}" text-anchor="end" fill="#d62828">'
               f'mean {_fmt(mean)}</text>')
    out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{TOP + plot_h}" y2="{TOP + plot_h}" stroke="#888" />')
    x = LEFT
    seen = []
    for module, _, _ in items:
        part = part_of(module)
        if part not in seen:
            seen.append(part)
    for part in seen:
        out.append(f'<rect x="{x}" y="{HEIGHT - 16}" width="10" height="10" fill="{PART_COLORS[part]}" />')
        out.append(f'<text x="{x + 14}" y="{HEIGHT - 7}">{part}</text>')
        x += 14 + 7 * len(part) + 18
    out.append(f'<text x="{WIDTH - RIGHT}" y="{HEIGHT - 7}" text-anchor="end">{len(items)} modules, file order</text>')
    out.append("</svg>")
    return "".join(out)
