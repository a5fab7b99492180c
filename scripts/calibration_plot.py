"""The confidence calibration curves as an SVG reliability diagram (docs/calibration.svg), from result files.

Curves: ``calibration.json`` (validation worlds: the fitted and the uncalibrated confidence) and
``accuracy.json`` (held-out worlds: ``confidence_curve`` of the measured model). Each bin is a point at
(mean confidence, share of photos whose reported top-1 was within 25 m), its area the number of photos;
the diagonal is perfect calibration. Plain SVG, no plotting library.
"""
from __future__ import annotations

SIZE, PAD = 360, 44
COLOURS = {"held-out worlds": "#d62728", "validation worlds": "#1f77b4", "validation, uncalibrated": "#999999"}


def curves(by_name: dict[str, dict]) -> dict[str, dict]:
    """The curves the result files hold: label -> reliability dict (``bins``, ``ece``)."""
    out: dict[str, dict] = {}
    accuracy = by_name.get("accuracy", {}).get("figures", {}).get("models", {})
    held = next((m["confidence_curve"] for m in accuracy.values() if "confidence_curve" in m), None)
    if held:
        out["held-out worlds"] = held
    cal = by_name.get("calibration", {}).get("figures", {})
    if "curve" in cal:
        out["validation worlds"] = cal["curve"]["all"]
    if "uncalibrated_curve" in cal:
        out["validation, uncalibrated"] = cal["uncalibrated_curve"]
    return out


def _xy(p: float, q: float) -> tuple[float, float]:
    span = SIZE - 2 * PAD
    return PAD + p * span, SIZE - PAD - q * span


def render(by_name: dict[str, dict]) -> str | None:
    """The SVG text, or None when no result file holds a curve."""
    found = curves(by_name)
    if not found:
        return None
    x0, y0 = _xy(0, 0)
    x1, y1 = _xy(1, 1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{SIZE + 170}" height="{SIZE}" '
             'font-family="sans-serif" font-size="11">',
             f'<rect x="{x0}" y="{y1}" width="{x1 - x0}" height="{y0 - y1}" fill="none" stroke="#000"/>',
             f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y1}" stroke="#bbb" stroke-dasharray="4 3"/>',
             f'<text x="{(x0 + x1) / 2}" y="{SIZE - 10}" text-anchor="middle">'
             'confidence of the top-1 (bin mean)</text>',
             f'<text x="12" y="{(y0 + y1) / 2}" text-anchor="middle" transform="rotate(-90 12 {(y0 + y1) / 2})">'
             'share within 25 m</text>']
    for t in (0.0, 0.5, 1.0):
        tx, ty = _xy(t, t)
        parts += [f'<text x="{tx}" y="{y0 + 14}" text-anchor="middle">{t:g}</text>',
                  f'<text x="{x0 - 6}" y="{ty + 4}" text-anchor="end">{t:g}</text>']
    for n, (label, curve) in enumerate(found.items()):
        colour = COLOURS.get(label, "#000")
        pts = [(_xy(b["mean_confidence"], b["hit_rate"]), b["photos"]) for b in curve["bins"]]
        path = " ".join(f"{x:.1f},{y:.1f}" for (x, y), _ in pts)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        parts += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{min(9.0, 1.5 + photos ** 0.5 / 2):.1f}" fill="{colour}" '
                  f'fill-opacity="0.6"/>' for (x, y), photos in pts]
        ly = PAD + 16 * n
        parts += [f'<rect x="{SIZE - 6}" y="{ly - 8}" width="10" height="10" fill="{colour}"/>',
                  f'<text x="{SIZE + 8}" y="{ly + 1}">{label} (ECE {curve["ece"]:.3f}, {curve["photos"]} photos)'
                  '</text>']
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
