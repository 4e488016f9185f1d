"""The HTML report's shell: one inline stylesheet, no scripts, no external assets."""

from __future__ import annotations

from html import escape

CSS = """
:root { --fg:#1f2328; --muted:#59636e; --line:#d1d9e0; --bg:#ffffff; --soft:#f6f8fa;
        --pass:#1a7f37; --fail:#cf222e; --inc:#9a6700; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.5 -apple-system, "Segoe UI", "Noto Sans", Helvetica, Arial, sans-serif;
       color: var(--fg); background: var(--bg); }
main { max-width: 1120px; margin: 0 auto; padding: 24px 28px 64px; }
h1 { font-size: 22px; margin: 0; }
h2 { font-size: 17px; margin: 32px 0 10px; padding-bottom: 6px; border-bottom: 1px solid var(--line); }
h3 { font-size: 15px; margin: 18px 0 8px; }
.muted { color: var(--muted); }
header.top { display: flex; align-items: center; gap: 18px; padding: 18px 22px; border-radius: 10px;
             border: 1px solid var(--line); background: var(--soft); }
.badge { font-weight: 700; font-size: 20px; letter-spacing: .04em; color: #fff; padding: 8px 18px;
         border-radius: 8px; white-space: nowrap; }
.badge.PASS { background: var(--pass); } .badge.FAIL { background: var(--fail); }
.badge.INCONCLUSIVE { background: var(--inc); }
.chip { display: inline-block; font-weight: 600; font-size: 12px; padding: 1px 8px; border-radius: 999px;
        color: #fff; }
.chip.PASS { background: var(--pass); } .chip.FAIL { background: var(--fail); }
.chip.INCONCLUSIVE { background: var(--inc); }
.meta { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin-top: 6px; font-size: 13px; }
.meta dt { color: var(--muted); } .meta dd { margin: 0; overflow-wrap: anywhere; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { border-bottom: 1px solid var(--line); padding: 6px 8px; text-align: left; vertical-align: top; }
th { background: var(--soft); font-weight: 600; white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.reason { color: var(--muted); min-width: 280px; }
tr.FAIL td:first-child { box-shadow: inset 3px 0 0 var(--fail); }
tr.INCONCLUSIVE td:first-child { box-shadow: inset 3px 0 0 var(--inc); }
tr.PASS td:first-child { box-shadow: inset 3px 0 0 var(--pass); }
svg text { font: 12px -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; fill: var(--fg); }
svg .axis { fill: var(--muted); } svg .value { font-variant-numeric: tabular-nums; }
svg .title { font-weight: 600; font-size: 13px; } svg .tick { fill: var(--muted); font-size: 11px; }
svg .band { fill: var(--soft); } svg .zero { stroke: #8c959f; stroke-width: 1; }
svg .budget { stroke: var(--fail); stroke-width: 1.2; stroke-dasharray: 5 4; opacity: .55; }
svg .budget-tick { stroke: var(--fail); stroke-width: 2.5; }
svg .ci { stroke-width: 3; stroke-linecap: round; } svg .cap { stroke-width: 2; }
svg .marked { fill: none; stroke: #ff2d2d; stroke-width: 2.5; }
svg .grid { stroke: #d0d7de; stroke-width: 1; stroke-dasharray: 2 4; }
.figure { border: 1px solid var(--line); border-radius: 8px; padding: 12px; overflow-x: auto; }
details { border: 1px solid var(--line); border-radius: 8px; margin: 8px 0; background: var(--bg); }
details > summary { cursor: pointer; padding: 8px 12px; font-weight: 600; background: var(--soft);
                    border-radius: 8px; }
details[open] > summary { border-bottom: 1px solid var(--line); border-radius: 8px 8px 0 0; }
details .body { padding: 10px 12px; }
.item { border-top: 1px solid var(--line); padding: 10px 0; } .item:first-child { border-top: 0; }
.item .id { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-weight: 600; }
.pair { display: grid; grid-template-columns: 1fr 1fr; gap: 10px; margin-top: 6px; }
.pair .side { border: 1px solid var(--line); border-radius: 6px; overflow: hidden; }
.pair .side > div.h { font-size: 12px; font-weight: 600; padding: 3px 8px; background: var(--soft);
                      border-bottom: 1px solid var(--line); }
.pair .side.cand > div.h { background: #fff1f0; }
pre { margin: 0; padding: 8px; white-space: pre-wrap; overflow-wrap: anywhere; max-height: 320px; overflow: auto;
      font: 12px/1.45 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.tag { display: inline-block; font-size: 11px; padding: 0 6px; margin: 0 4px 0 0; border-radius: 4px;
       background: #ffebe9; color: var(--fail); border: 1px solid #ffcecb; }
.small { font-size: 12px; }
.item details { border: 0; margin: 2px 0; background: none; }
.item details > summary { background: none; padding: 2px 0; font-weight: 400; font-size: 12px; color: var(--muted); }
.item details[open] > summary { border: 0; }
.item details .body { padding: 0; border: 1px solid var(--line); border-radius: 6px; }
footer { margin-top: 40px; color: var(--muted); font-size: 12px; }
"""


def page(title: str, body: str) -> str:
    """A complete HTML document around ``body`` (already escaped)."""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n{body}\n</main>\n"
        "</body>\n</html>\n"
    )
