"""Running up to a step, and saying why one is stale (issue 11 §5), against a real tracking server.

- `trainwise run --to check` runs only what check needs; a step whose upstream is stale names the
  settings that changed and the command that runs it; `--with-upstream` runs them first;
  `trainwise status` says why each stale step is stale.
- What a step's identity ignores (StepSpec.ignores) it must never read: every read of a checks or
  train setting is recorded while sample, prepare and check really run, and none is an ignored one.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import REPO
from tests.helpers import invoke, step_runs
from trainwise.config import ChecksConfig, TrainConfig
from trainwise.steps import get_step

WINE = str(REPO / "projects" / "wine")
DIGITS = str(REPO / "projects" / "digits")


def test_run_to_check_then_a_stale_upstream_is_named_and_run_with_upstream(tracking_server: str, unique_name: str) -> None:
    args = ("--project", WINE, "--dry-run")
    name = f"name={unique_name}"
    output = invoke("run", *args, "--set", name, "--to", "check")
    ran = {step: len(step_runs(tracking_server, unique_name, step)) for step in ("understand", "explore", "ingest", "sample", "prepare", "check", "train")}
    assert ran == {"understand": 0, "explore": 0, "ingest": 1, "sample": 1, "prepare": 1, "check": 1, "train": 0}, (ran, output)

    changed = (*args, "--set", f"{name} sample.size=80")
    output = invoke("check", *changed, code=1)
    assert "check needs sample, prepare, with no finished run for this config and data" in output, output
    assert "sample: sample.size 100 -> 80" in output and "prepare: upstream sample changed" in output, output
    assert "--with-upstream" in output and "runs sample, prepare first" in output, output
    assert len(step_runs(tracking_server, unique_name, "check")) == 1  # nothing ran

    output = invoke("check", *changed, "--with-upstream")
    assert "check needs sample, prepare first" in output, output
    assert [len(step_runs(tracking_server, unique_name, s)) for s in ("ingest", "sample", "prepare", "check")] == [1, 2, 2, 2]

    output = invoke("status", *changed[:-2], "--set", f"{name} sample.size=80 checks.learning_curve_fractions=[0.3]")
    train_row = next(line for line in output.splitlines() if " train " in line)
    assert "never run" in train_row
    assert all(" fresh " in line for line in output.splitlines() if any(f" {s} " in line for s in ("sample", "prepare", "check")))


@pytest.fixture
def setting_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every `checks.<field>` and `train.<field>` a step's own work reads (inside its `run`, not while the
    config is loaded and validated), through attribute access, in order."""
    reads: list[str] = []
    inside = [False]
    for section, cls in (("checks", ChecksConfig), ("train", TrainConfig)):
        fields, original = set(cls.model_fields), cls.__getattribute__

        def spy(self: object, attribute: str, _fields: set[str] = fields, _section: str = section, _original=original) -> object:
            if inside[0] and attribute in _fields:
                reads.append(f"{_section}.{attribute}")
            return _original(self, attribute)

        monkeypatch.setattr(cls, "__getattribute__", spy)
    for step in ("understand", "sample", "prepare", "check"):
        module = get_step(step).load()

        def run(*args: object, _run=module.run) -> object:
            inside[0] = True
            try:
                return _run(*args)
            finally:
                inside[0] = False

        monkeypatch.setattr(module, "run", run)
    yield reads


@pytest.mark.parametrize("project", [DIGITS, WINE], ids=["digits", "wine"])
def test_steps_never_read_the_settings_their_identity_ignores(
    tracking_server: str, unique_name: str, setting_reads: list[str], project: str
) -> None:
    args = ("--project", project, "--set", f"name={unique_name}", "--dry-run")
    for step in ("understand", "ingest", "sample", "prepare", "check"):
        setting_reads.clear()
        invoke(step, *args, code=None)  # check may fail its rows; its run must still have finished
        assert step_runs(tracking_server, unique_name, step)[0].info.status == "FINISHED", step
        if step == "ingest":
            continue
        spec = get_step(step)
        read = set(setting_reads)
        assert read or step == "understand", f"{step}: no setting read recorded (the spy is not working)"
        outside = {key for key in read if key.split(".", 1)[0] not in spec.sections or key in spec.ignores}
        assert not outside, f"{step} reads {sorted(outside)}, which its identity does not hold"
