#!/usr/bin/env python3
"""Regenerates the generated blocks of BENCHMARKS.md from run-all.sh output.

usage: benchmarks_md.py <output dir> <BENCHMARKS.md>

A block is the text between `<!-- generated:KEY -->` and
`<!-- /generated:KEY -->`: `machine`, `targets`, and one per backend
package (its bench's Markdown table). A block whose input is missing is
left as it is, so a run of some backends keeps the others' tables.
"""

import re
import sys
from pathlib import Path

BACKENDS = [
    "vault",
    "s3",
    "aws-secretsmanager",
    "kubernetes-secret",
    "flux-helmrelease",
    "sops-git",
]

# Rows each target reads, per backend: (label, row name) pairs.
GET_ROWS = {
    "flux-helmrelease": [
        ("latest c1", "get-latest c1 backend"),
        ("latest c32", "get-latest c32 backend"),
        ("older c1", "get-older c1 backend"),
        ("older c32", "get-older c32 backend"),
    ],
    "sops-git": [("c1", "get c1"), ("c32", "get c32")],
}
UPDATE_ROWS = {"sops-git": [("c1", "update c1"), ("c32", "update c32")]}


def default_rows(op):
    return [("c1", f"{op} c1 backend"), ("c32", f"{op} c32 backend")]


def parse_table(text):
    """The Markdown table of a bench's output: a list of dicts by header."""
    lines = [l for l in text.splitlines() if l.startswith("|")]
    if len(lines) < 2:
        return [], []
    cells = lambda l: [c.strip() for c in l.strip().strip("|").split("|")]
    header = cells(lines[0])
    rows = [dict(zip(header, cells(l))) for l in lines[2:]]
    return lines, rows


def number(cell):
    m = re.search(r"[-+]?[0-9]+(?:\.[0-9]+)?", cell or "")
    return float(m.group(0)) if m else None


def row(rows, name):
    return next((r for r in rows if r.get("row") == name), None)


def figures(rows, pairs, column):
    out = []
    for label, name in pairs:
        r = row(rows, name)
        if r is not None and number(r.get(column)) is not None:
            out.append((label, number(r[column])))
    return out


def met(ok):
    return "yes" if ok else "**no**"


def cell_of(values, unit, limit, digits=0):
    """`c1 12 / c32 14 µs, yes`: the figures and whether the worst is within."""
    if not values:
        return "-"
    text = ", ".join(f"{label} {v:.{digits}f}" for label, v in values)
    return f"{text} {unit}: {met(max(v for _, v in values) <= limit)}"


def targets(tables):
    head = ["target"] + [b for b in BACKENDS]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---|" * len(BACKENDS)]
    spec = [
        ("backend CPU per GetValue ≤ 50 µs", "get", 50),
        ("backend CPU per OnUpdate ≤ 150 µs", "update", 150),
    ]
    for title, op, limit in spec:
        cells = []
        for b in BACKENDS:
            rows = tables.get(b)
            if rows is None:
                cells.append("not run")
                continue
            pairs = (GET_ROWS if op == "get" else UPDATE_ROWS).get(b, default_rows(op))
            cells.append(cell_of(figures(rows, pairs, "backend CPU/call"), "µs", limit))
        lines.append(f"| {title} | " + " | ".join(cells) + " |")

    def extra(key, unit, limit, title, digits=0):
        cells = []
        for b in BACKENDS:
            rows = tables.get(b)
            vals = [number(r.get(key)) for r in rows or [] if number(r.get(key)) is not None]
            cells.append(
                "not run"
                if rows is None
                else cell_of([("", v) for v in vals[:1]], unit, limit, digits).lstrip()
            )
        lines.append(f"| {title} | " + " | ".join(cells) + " |")

    extra("RSS idle", "MiB", 15, "RSS idle ≤ 15 MiB", 1)
    cells = []
    for b in BACKENDS:
        rows = tables.get(b)
        if rows is None:
            cells.append("not run")
            continue
        # The backend's rows under c32 load (not the forwarder's).
        peaks = [
            number(r.get("backend RSS peak"))
            for r in rows
            if "c32" in r.get("row", "")
            and not r["row"].startswith("floor")
            and number(r.get("backend RSS peak")) is not None
        ]
        cells.append(cell_of([("", max(peaks))] if peaks else [], "MiB", 50, 1).lstrip())
    lines.append("| RSS peak under c32 ≤ 50 MiB | " + " | ".join(cells) + " |")
    extra("start to SERVING", "ms", 200, "start to SERVING ≤ 200 ms")

    cells = []
    for b in BACKENDS:
        rows = tables.get(b)
        if rows is None:
            cells.append("not run")
            continue
        name = (GET_ROWS.get(b) or default_rows("get"))[0][1]
        r = row(rows, name) or {}
        floor, direct = number(r.get("p50 over floor")), number(r.get("p50 over direct"))
        if floor is not None:
            cells.append(f"{floor:+.0f} µs over the floor: {met(floor <= 60)}")
        elif direct is not None:
            cells.append(f"{direct:+.0f} µs over direct (no floor): {met(direct <= 60)}")
        else:
            cells.append("no direct row")
    lines.append("| GetValue c1 p50 added over the forwarder floor ≤ 60 µs | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def replace_block(doc, key, body):
    pattern = re.compile(
        rf"(<!-- generated:{re.escape(key)} -->\n).*?(<!-- /generated:{re.escape(key)} -->)",
        re.S,
    )
    if not pattern.search(doc):
        sys.exit(f"BENCHMARKS.md has no block {key!r}")
    return pattern.sub(lambda m: m.group(1) + body.rstrip("\n") + "\n" + m.group(2), doc)


def main():
    out, md = Path(sys.argv[1]), Path(sys.argv[2])
    doc = md.read_text()
    tables = {}
    for b in BACKENDS:
        f = out / f"{b}.txt"
        if not f.exists():
            continue
        lines, rows = parse_table(f.read_text())
        if not lines:
            sys.exit(f"{f} holds no Markdown table")
        tables[b] = rows
        doc = replace_block(doc, b, "\n".join(lines))
    machine = out / "machine.txt"
    if machine.exists():
        doc = replace_block(doc, "machine", "```\n" + machine.read_text().rstrip() + "\n```")
    # The targets read every backend's table as the document now holds it,
    # so a run of some backends keeps the others' figures.
    for b in BACKENDS:
        m = re.search(rf"<!-- generated:{re.escape(b)} -->\n(.*?)<!-- /generated:", doc, re.S)
        _, rows = parse_table(m.group(1) if m else "")
        if rows:
            tables[b] = rows
    doc = replace_block(doc, "targets", targets(tables))
    md.write_text(doc)


if __name__ == "__main__":
    main()
