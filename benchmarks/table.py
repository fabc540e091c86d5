"""Render a benchmarks/run.py JSON result as the Markdown tables of docs/performance.md.

    python benchmarks/table.py benchmarks/results/cpu-64.json
"""

from __future__ import annotations

import json
import sys


def render(path: str) -> str:
    data = json.loads(open(path).read())
    args, rows = data["args"], data["rows"]
    libraries = sorted({p.split(" ", 1)[0] for r in rows.values() for p in r["peers"]})
    lines = [f"VGG16-GAP width {args['width']}, {args['size']}x{args['size']}, {args['images']} images; "
             f"{data['machine']}; {data.get('date', '')}; median of {args['repeats']} paired repeats"
             + (f"; ours in {args['ours_precision']} (floors too), peers in float32"
                if args.get("ours_precision", "float32") != "float32" else "") + ".", "",
             "| what | floor | ours / floor | images/s | " + " | ".join(f"ours / {lib}" for lib in libraries) + " |",
             "|---|---|---:|---:|" + "---|" * len(libraries)]
    for name, r in rows.items():
        cells = []
        for lib in libraries:
            found = [(label.split(" ", 1)[1], v) for label, v in r["peers"].items() if label.startswith(lib + " ")]
            cells.append("; ".join(
                f"{v['ours_over_peer']:.2f} ({method}"
                + ("" if v["max_difference"] is None else f", same work: Δ {v['max_difference']:.0e}") + ")"
                for method, v in found))
        lines.append(f"| {name} | {r['floor']} | {r['ratio_to_floor']:.3f} | {r['images_per_second']:.1f} | "
                     + " | ".join(cells) + " |")
    if data.get("precision"):
        kinds = list(next(iter(data["precision"].values())))
        lines += ["", "| what | " + " | ".join(f"{k}: speed-up, largest change" for k in kinds) + " |",
                  "|---|" + "---:|" * len(kinds)]
        for name, p in data["precision"].items():
            lines.append(f"| {name} | " + " | ".join(
                f"{p[k]['speedup']:.2f}x, {p[k]['largest_change']:.1e}" for k in kinds) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    for path in sys.argv[1:]:
        print(render(path))
        print()
