"""The bug zoo's table for the README, from the JSON lines test_bugzoo.py wrote.

    TRAINWISE_ZOO_REPORT=/tmp/zoo.jsonl .venv/bin/python -m pytest tests/bugzoo
    .venv/bin/python -m tests.bugzoo.report /tmp/zoo.jsonl
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def table(rows: list[dict]) -> str:
    lines = ["| case | kind | planted | caught by | caught | other rows failed | seconds |", "|---|---|---|---|---|---|---:|"]
    for r in rows:
        caught = "—" if r["category"] == "control" else ("yes" if all(c in r["failed"] for c in r["catches"]) else "**no**")
        others = [f for f in r["failed"] if f not in r["catches"]]
        lines.append(f"| {r['case']} | {r['category']} | {r['what']} | {', '.join(r['catches']) or '(every row passes)'} | {caught} | "
                     f"{', '.join(others) or 'none'} | {r['seconds']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table([json.loads(line) for line in Path(sys.argv[1]).read_text().splitlines() if line.strip()]))
