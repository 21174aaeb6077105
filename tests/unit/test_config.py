"""Project configs: every shipped project loads; bad configs fail naming the file and the key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainwise.config import DRY_RUN_OVERRIDES, load_config, parse_overrides
from trainwise.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted(p.parent.name for p in (REPO / "projects").glob("*/project.yaml"))


def test_the_expected_projects_ship() -> None:
    assert set(SHIPPED) >= {"digits", "fashion-mnist", "cifar10", "wine", "diabetes"}


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_project_loads(name: str) -> None:
    cfg = load_config(REPO / "projects" / name)
    assert cfg.name == name
    assert cfg.source_file == REPO / "projects" / name / "project.yaml"
    assert cfg.registry.model_name == f"trainwise-{name}"
    params = cfg.flat_params()
    assert params["task.type"] == cfg.task.type
    assert all(isinstance(v, str) for v in params.values())


def test_defaults_fill_what_a_project_leaves_out() -> None:
    cfg = load_config(REPO / "projects" / "wine")
    assert cfg.task.metric == "accuracy" and cfg.task.direction == "maximize"
    assert cfg.train.optimizer == "adamw" and cfg.train.epochs == 60
    assert cfg.sample.fraction == 0.5 and cfg.sample.size is None
    regression = load_config(REPO / "projects" / "diabetes")
    assert regression.task.metric == "rmse" and regression.task.direction == "minimize"


def write_project(tmp_path: Path, text: str) -> Path:
    folder = tmp_path / "proj"
    folder.mkdir(exist_ok=True)
    (folder / "project.yaml").write_text(text)
    return folder


MINIMAL = """
name: mine
task: {type: tabular_classification, target: y}
data: {source: {kind: tabular, path: rows.csv}}
"""


def test_relative_paths_resolve_against_the_project_folder(tmp_path: Path) -> None:
    folder = write_project(tmp_path, MINIMAL)
    (folder / "rows.csv").write_text("a,y\n1,0\n")
    cfg = load_config(folder)
    assert cfg.data.source.path == (folder / "rows.csv").resolve()


@pytest.mark.parametrize(
    ("text", "overrides", "expected"),
    [
        (MINIMAL, [], ["data.source.path", "rows.csv does not exist"]),
        (MINIMAL.replace("task:", "tsak:"), [], ["tsak: unknown key (did you mean 'task'?)", "task: required key is missing"]),
        (MINIMAL, ["train.epochs=many"], ["train.epochs", "valid integer", "'many'"]),
        (MINIMAL, ["train.epoch=3"], ["train.epoch: unknown key (did you mean 'epochs'?)"]),
        (MINIMAL, ["task.metric=rmse"], ["task", "metric 'rmse' does not fit task 'tabular_classification'"]),
        (MINIMAL, ["data.source.kind=parquet"], ["data.source: unknown kind 'parquet'"]),
        (MINIMAL, ["model.name=nets.py:Net"], ["model.name", "nets.py does not exist"]),
        (MINIMAL, ["model.name=not-a-ref!"], ["model.name", "is not a model reference"]),
        (MINIMAL, ["task.type=image_classification"], ["data.source.kind 'tabular' does not fit task.type 'image_classification'"]),
        (MINIMAL, ["sample.size=10", "sample.fraction=0.1"], ["sample", "not both"]),
        (MINIMAL, ["tune.trials=null"], ["tune", "never ends"]),
        (MINIMAL, ["tune.space.train.lr={type: float, low: 0, high: 1, log: true}"], ["tune.space.train.lr", "log-scaled range needs low > 0"]),
        (MINIMAL, ["tune.space.data.x={type: int, low: 1, high: 2}"], ["tune.space", "only keys under train, model, augment"]),
        (MINIMAL, ["image.size=[0, 4]"], ["image.size", "at least 1 pixel"]),
        (MINIMAL.replace("name: mine", "name: My Project"), [], ["name", "should match pattern"]),
    ],
)
def test_bad_config_names_the_file_and_key(tmp_path: Path, text: str, overrides: list[str], expected: list[str]) -> None:
    folder = write_project(tmp_path, text)
    if "rows.csv does not exist" not in expected[-1]:
        (folder / "rows.csv").write_text("a,y\n1,0\n")
    with pytest.raises(ConfigError) as caught:
        load_config(folder, overrides)
    message = str(caught.value)
    assert str(folder / "project.yaml") in message
    for fragment in expected:
        assert fragment in message


def test_missing_image_folder_is_named(tmp_path: Path) -> None:
    folder = write_project(
        tmp_path, "name: imgs\ntask: {type: image_classification}\ndata: {source: {kind: image_folder, root: pics}}\n"
    )
    with pytest.raises(ConfigError, match=r"data\.source\.root: .*pics does not exist"):
        load_config(folder)


def test_yaml_syntax_error_gives_the_line(tmp_path: Path) -> None:
    folder = write_project(tmp_path, "name: x\ntask: [unclosed\n")
    with pytest.raises(ConfigError, match=r"project\.yaml: line \d+, column \d+ is not valid YAML"):
        load_config(folder)


def test_missing_project_lists_the_known_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    with pytest.raises(ConfigError, match=r"no project at projects/nope.*Projects here: .*digits"):
        load_config("projects/nope")


def test_a_bare_name_finds_the_project_under_projects(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    assert load_config("wine").name == "wine"


def test_overrides_parse_as_yaml_and_split_on_assignments() -> None:
    parsed = parse_overrides(["train.epochs=3 sample.size=200", "tune.space.train.lr={type: float, low: 0.1, high: 1}", "model.init=null"])
    assert parsed == {
        "train.epochs": 3,
        "sample.size": 200,
        "tune.space.train.lr": {"type": "float", "low": 0.1, "high": 1},
        "model.init": None,
    }
    assert parse_overrides([""]) == {}


@pytest.mark.parametrize("bad", ["epochs", "=3", ".x=1", "train..epochs=1"])
def test_malformed_override_is_an_error(bad: str) -> None:
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_overrides([bad])


def test_overrides_change_the_config_and_its_hash() -> None:
    base = load_config(REPO / "projects" / "digits")
    changed = load_config(REPO / "projects" / "digits", ["train.epochs=3", "tune.space.train.lr={type: float, low: 0.01, high: 0.1}"])
    assert changed.train.epochs == 3
    assert changed.tune.space["train.lr"].high == 0.1
    assert changed.config_hash() != base.config_hash()
    assert load_config(REPO / "projects" / "digits").config_hash() == base.config_hash()


def test_dry_run_applies_tiny_settings_that_explicit_overrides_beat() -> None:
    cfg = load_config(REPO / "projects" / "digits", ["train.epochs=2"], dry_run=True)
    assert cfg.dry_run
    assert cfg.train.epochs == 2
    assert cfg.sample.size == DRY_RUN_OVERRIDES["sample.size"]
    assert cfg.tune.trials == DRY_RUN_OVERRIDES["tune.trials"]


def test_own_module_reference_resolves_its_file(tmp_path: Path) -> None:
    folder = write_project(tmp_path, MINIMAL)
    (folder / "rows.csv").write_text("a,y\n1,0\n")
    (folder / "nets.py").write_text("class Net: ...\n")
    cfg = load_config(folder, ["model.name=nets.py:Net"])
    assert cfg.model.name == f"{(folder / 'nets.py').resolve()}:Net"
    assert load_config(folder, ["model.name=torchvision:resnet18"]).model.name == "torchvision:resnet18"
    assert load_config(folder, ["model.name=mypkg.models:Net"]).model.name == "mypkg.models:Net"


def test_a_table_project_refuses_flip_tta_when_loaded(tmp_path: Path) -> None:
    (tmp_path / "project.yaml").write_text(
        "name: t\ntask: {type: tabular_classification, target: target}\ndata: {source: {kind: tabular, sklearn: wine}}\n"
        "model: {name: mlp}\nsubmission: {tta: flip}\n"
    )
    with pytest.raises(ConfigError, match=r"submission\.tta 'flip' mirrors images"):
        load_config(tmp_path)


def test_a_table_project_that_names_no_model_gets_the_mlp_and_a_search_space(tmp_path: Path) -> None:
    (tmp_path / "project.yaml").write_text("name: t\ntask: {type: tabular_classification, target: target}\ndata: {source: {kind: tabular, sklearn: wine}}\n")
    cfg = load_config(tmp_path)
    assert cfg.model.name == "mlp"  # simple_cnn, the image default, cannot read rows
    assert {"train.lr", "train.weight_decay", "model.params.depth"} <= set(cfg.tune.space)
    assert cfg.tune.space["model.params.depth"].low == 0  # a linear model, the baseline's kind, is in the space
    named = tmp_path / "named"
    named.mkdir()
    (named / "project.yaml").write_text(
        "name: t\ntask: {type: tabular_classification, target: target}\ndata: {source: {kind: tabular, sklearn: wine}}\n"
        "model: {name: mlp, params: {hidden: [8]}}\n"
    )
    assert load_config(named).tune.space == {}  # a model the user chose: their space, not ours
