"""The benchmark's results as a plain-text table (for people) and as JSON (for comparing runs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from daemon.files import write_atomic


def format_table(results: dict[str, Any]) -> str:
    """One block per section: its rows as aligned columns, then its checks and notes."""
    machine = results.get("machine", {})
    lines = [
        f"lipsyncd bench  {results.get('date', '')}",
        f"machine: {machine.get('cpu', '?')}, {machine.get('cpu_cores', '?')} cores, "
        f"{machine.get('ram_gib', '?')} GiB, GPU: {machine.get('gpu') or 'none'}",
    ]
    for section in results.get("sections", []):
        lines += ["", f"== {section['title']} ({section['name']}, {section.get('seconds', 0):g} s)"]
        lines += _rows(section.get("rows", []))
        lines += [_check(check) for check in section.get("checks", [])]
        lines += [f"   note: {note}" for note in section.get("notes", [])]
        if section.get("error"):
            lines.append(f"   FAILED: {section['error']}")
    return "\n".join(lines) + "\n"


def _rows(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    columns = list(dict.fromkeys(key for row in rows for key in row))
    cells = [[_cell(row.get(column, "")) for column in columns] for row in rows]
    widths = [max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(columns)]
    header = "  ".join(column.rjust(width) for column, width in zip(columns, widths, strict=True))
    body = ["  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True)) for line in cells]
    return [header, *body]


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) < 1e6 else f"{value:.3g}"
    return str(value)


def _check(check: dict[str, Any]) -> str:
    mark = "met   " if check["met"] else "MISSED"
    return f"   [{mark}] {check['what']}: {check['value']} (target {check['target']})"


def write_json(results: dict[str, Any], path: Path) -> None:
    """Write atomically: a temp file in the same folder, renamed into place."""
    write_atomic(path, json.dumps(results, indent=2, default=str) + "\n")
