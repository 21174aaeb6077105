"""Every planted bug is caught by its rows; every clean control passes every row."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.bugzoo.zoo import CASES, Case, run_case

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bugzoo(case: Case, tracking_server: str, tmp_path: Path) -> None:
    outcome = run_case(case, tmp_path / case.name.replace("_", "-"), tracking_server)
    report = os.environ.get("TRAINWISE_ZOO_REPORT")
    if report:  # rows for the README's table (python -m tests.bugzoo.report)
        with open(report, "a") as out:
            out.write(json.dumps({"case": case.name, "category": case.category, "what": case.what, "catches": case.catches,
                                  "failed": outcome.failed, "seconds": round(outcome.seconds, 1)}) + "\n")
    for catch in case.catches:
        if catch.endswith(" refused") and catch in outcome.failed:
            assert case.refusal in outcome.meanings[catch], outcome.meanings[catch]  # refused for the planted reason
    if case.category == "control":
        assert outcome.failed == [], {name: outcome.meanings[name] for name in outcome.failed}
    elif case.known_miss:  # the miss itself, so a change that catches it (or breaks the case) shows here
        assert not any(name.endswith(" refused") for name in outcome.failed), outcome.meanings
        assert not set(case.catches) & set(outcome.failed), f"{case.name} is caught now: drop known_miss ({outcome.failed})"
    else:
        missed = [name for name in case.catches if name not in outcome.failed]
        assert not missed, f"{case.name}: {missed} passed; failed: {outcome.failed}"
