"""serving.py against a real tracking server: the logged pyfunc predicts from raw images and table rows.

Loaded in this process, in a fresh one (the package travels with the model), and served by
`mlflow models serve`. No training: tiny networks with known or seeded weights.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from PIL import Image

from tests.conftest import free_port
from trainwise.data.table_prep import TablePreprocessor
from trainwise.models import create_model
from trainwise.serving import check_spec, log_model, supports_tta
from trainwise.tracking import Tracker

CLASSES = ["cat", "dog", "eel"]
MEAN, STD = [0.4], [0.25]
IMAGE_SPEC = {
    "model": "simple_cnn",
    "input_shape": [1, 8, 8],
    "num_outputs": 3,
    "params": {"width": 8},
    "task": "classification",
    "classes": CLASSES,
    "preprocessing": {"kind": "image", "size": [8, 8], "channels": 1, "mean": MEAN, "std": STD},
}


@dataclass
class LoggedImageModel:
    uri: str
    run_id: str
    experiment_id: str
    network: torch.nn.Module
    pixels: list[np.ndarray]  # the 8x8 grey images, as written
    paths: list[str]  # those images as PNG files, then one 16x12 RGB image that must be resized


@pytest.fixture(scope="module")
def image_model(tracking_server: str, tmp_path_factory: pytest.TempPathFactory) -> LoggedImageModel:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    pixels = [rng.integers(0, 256, (8, 8), dtype=np.uint8) for _ in range(3)]
    paths = []
    for i, grey in enumerate(pixels):
        Image.fromarray(grey).save(folder / f"grey{i}.png")
        paths.append(str(folder / f"grey{i}.png"))
    Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(folder / "colour.png")
    paths.append(str(folder / "colour.png"))

    torch.manual_seed(0)
    network = create_model("simple_cnn", input_shape=(1, 8, 8), num_outputs=3, params={"width": 8})
    with torch.no_grad():  # distinct, confident outputs, so a preprocessing slip changes them visibly
        network.head.weight.mul_(300.0)
    network.eval()
    tracker = Tracker(f"serving-images-{os.getpid()}", tracking_server)
    with tracker.run("train") as run:
        run.log_params({"model.name": "simple_cnn"})
        uri = log_model(run.run_id, tracking_uri=run.tracking_uri, model=network, spec=IMAGE_SPEC, input_example=pd.DataFrame({"image": paths[:1]}))
    return LoggedImageModel(uri, run.run_id, tracker.experiment_id, network, pixels, paths)


def b64(path: str) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


def check_classification(out: pd.DataFrame, classes: list[str], rows: int) -> None:
    assert list(out.columns) == ["label", "index", *(f"prob_{c}" for c in classes)]
    assert len(out) == rows
    probabilities = out[[f"prob_{c}" for c in classes]].to_numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-9)
    assert (probabilities.argmax(axis=1) == out["index"].to_numpy()).all()
    assert [classes[i] for i in out["index"]] == out["label"].tolist()


def test_the_model_lives_in_the_runs_experiment_with_code_weights_and_spec(
    image_model: LoggedImageModel, tracking_server: str
) -> None:
    client = MlflowClient(tracking_server)
    model_id = image_model.uri.removeprefix("models:/")
    logged = client.get_logged_model(model_id)
    assert logged.experiment_id == image_model.experiment_id  # MLflow alone would file it under experiment 0
    assert logged.source_run_id == image_model.run_id and str(logged.status) == "READY"
    assert logged.params == {"model.name": "simple_cnn"}
    files = {a.path for a in client.list_logged_model_artifacts(model_id)}
    assert {"MLmodel", "trainwise_model.py", "requirements.txt", "code", "artifacts"} <= files
    assert not any(path.endswith(".pkl") for path in files)  # models from code: nothing pickled
    local = Path(mlflow.artifacts.download_artifacts(image_model.uri))
    assert (local / "code" / "trainwise" / "serving.py").is_file()
    assert not list(local.rglob("__pycache__"))
    spec = json.loads((local / "artifacts" / "spec.json").read_text())
    assert spec["classes"] == CLASSES and spec["preprocessing"]["mean"] == MEAN and spec["trainwise_version"]
    requirements = (local / "requirements.txt").read_text().split()
    assert any(r.startswith("torch==") for r in requirements) and any(r.startswith("safetensors==") for r in requirements)
    example = json.loads((local / "serving_input_example.json").read_text())["dataframe_split"]
    assert example["columns"] == ["image"] and base64.b64decode(example["data"][0][0]) == Path(image_model.paths[0]).read_bytes()
    # The runs:/ form reaches the same model.
    assert mlflow.pyfunc.load_model(f"runs:/{image_model.run_id}/model").metadata.model_id == model_id


def test_paths_bytes_and_base64_give_the_same_predictions_as_the_network(image_model: LoggedImageModel) -> None:
    model = mlflow.pyfunc.load_model(image_model.uri)
    paths = image_model.paths
    by_path = model.predict(pd.DataFrame({"image": paths}))
    by_bytes = model.predict(pd.DataFrame({"image": [Path(p).read_bytes() for p in paths]}))
    by_base64 = model.predict(pd.DataFrame({"image": [b64(p) for p in paths]}))
    check_classification(by_path, CLASSES, len(paths))
    pd.testing.assert_frame_equal(by_path, by_bytes)
    pd.testing.assert_frame_equal(by_path, by_base64)
    # The 8x8 grey images need no resize: the served answer is the network on (x/255 - mean) / std.
    x = (torch.from_numpy(np.stack(image_model.pixels)).float()[:, None] / 255.0 - MEAN[0]) / STD[0]
    with torch.no_grad():
        expected = torch.softmax(image_model.network(x).double(), dim=1).numpy()
    np.testing.assert_allclose(by_path[[f"prob_{c}" for c in CLASSES]].to_numpy()[:3], expected, atol=1e-6)
    assert by_path["label"].nunique() > 1  # the check above is not comparing constant outputs


def test_flip_tta_averages_the_probabilities_of_each_image_and_its_mirror(image_model: LoggedImageModel) -> None:
    model = mlflow.pyfunc.load_model(image_model.uri)
    assert supports_tta(model)
    frame = pd.DataFrame({"image": image_model.paths[:3]})
    flipped = model.predict(frame, params={"tta": "flip"})
    check_classification(flipped, CLASSES, 3)
    x = (torch.from_numpy(np.stack(image_model.pixels)).float()[:, None] / 255.0 - MEAN[0]) / STD[0]
    with torch.no_grad():
        plain = torch.softmax(image_model.network(x).double(), dim=1)
        mirror = torch.softmax(image_model.network(x.flip(-1)).double(), dim=1)
    np.testing.assert_allclose(flipped[[f"prob_{c}" for c in CLASSES]].to_numpy(), ((plain + mirror) / 2).numpy(), atol=1e-6)
    assert not np.allclose(plain.numpy(), mirror.numpy(), atol=1e-3)  # the mirror changes the answer: the mean is not trivially the plain one
    pd.testing.assert_frame_equal(model.predict(frame, params={"tta": "none"}), model.predict(frame))
    with pytest.raises(Exception, match="tta 'rotate': expected one of none, flip"):
        model.predict(frame, params={"tta": "rotate"})


def test_an_undecodable_row_is_a_value_error_naming_the_row(image_model: LoggedImageModel, tmp_path: Path) -> None:
    page = tmp_path / "page.png"
    page.write_text("<!DOCTYPE html><html><body>404 Not Found</body></html>")
    model = mlflow.pyfunc.load_model(image_model.uri)
    with pytest.raises(ValueError, match=r"row 1 \(.*page\.png\) is not an image \(an HTML page\) \[not_an_image\]"):
        model.predict(pd.DataFrame({"image": [image_model.paths[0], str(page)]}))
    with pytest.raises(ValueError, match=r"row 0: '/no/such/file.png' is neither an existing file nor base64"):
        model.predict(pd.DataFrame({"image": ["/no/such/file.png"]}))
    with pytest.raises(ValueError, match=r"row 0 is empty \(0 bytes\) \[empty_file\]"):
        model.predict(pd.DataFrame({"image": [b""]}))


def test_a_fresh_process_loads_the_model_with_the_package_it_carries(image_model: LoggedImageModel, tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import base64, json, sys
        from pathlib import Path
        import mlflow, pandas as pd
        uri, paths = sys.argv[1], sys.argv[2:]
        model = mlflow.pyfunc.load_model(uri)
        import trainwise
        frames = [pd.DataFrame({"image": v}) for v in (paths, [Path(p).read_bytes() for p in paths],
                  [base64.b64encode(Path(p).read_bytes()).decode() for p in paths])]
        out = [model.predict(f).to_dict(orient="list") for f in frames]
        print(json.dumps({"package": trainwise.__file__, "out": out}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, image_model.uri, *image_model.paths],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    # The model's own copy of trainwise comes first on sys.path, not this checkout.
    assert Path(answer["package"]).parts[-3:] == ("code", "trainwise", "__init__.py")
    here = mlflow.pyfunc.load_model(image_model.uri).predict(pd.DataFrame({"image": image_model.paths}))
    for out in answer["out"]:
        assert out["label"] == here["label"].tolist() and out["index"] == here["index"].tolist()
        np.testing.assert_allclose(out["prob_cat"], here["prob_cat"], atol=1e-9)


def test_a_users_own_model_file_travels_with_the_model(tracking_server: str, unique_name: str, tmp_path: Path) -> None:
    source = tmp_path / "src" / "my_net.py"
    source.parent.mkdir()
    source.write_text(
        textwrap.dedent(
            """
            from torch import nn

            class TinyNet(nn.Module):
                def __init__(self, in_channels, num_classes, hidden=4):
                    super().__init__()
                    self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 64, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

                def forward(self, x):
                    return self.body(x)
            """
        )
    )
    spec = {**IMAGE_SPEC, "model": f"{source}:TinyNet", "params": {"hidden": 6}}
    network = create_model(spec["model"], input_shape=(1, 8, 8), num_outputs=3, params={"hidden": 6}).eval()
    image = tmp_path / "one.png"
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4).save(image)
    tracker = Tracker(unique_name, tracking_server)
    with tracker.run("train") as run:
        uri = log_model(run.run_id, tracking_uri=run.tracking_uri, model=network, spec=spec, input_example=pd.DataFrame({"image": [str(image)]}))
    expected = mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"image": [str(image)]}))
    source.unlink()  # the model must not need the original file
    script = "import sys, mlflow, pandas as pd; m = mlflow.pyfunc.load_model(sys.argv[1]); print(m.predict(pd.DataFrame({'image': [sys.argv[2]]}))['index'][0])"
    done = subprocess.run([sys.executable, "-c", script, uri, str(image)], cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.strip().splitlines()[-1]) == int(expected["index"][0])


# -- tables ----------------------------------------------------------------------------------------


def _table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": range(8),
            "size": [1, 2, 3, 4, 5, 6, 7, 8],  # integers: the served signature must still take floats and NaN
            "weight": [0.5, 1.5, 2.0, 2.5, 3.5, 4.0, 5.5, 6.0],
            "colour": ["red", "blue", "red", "green", "blue", "red", "green", "blue"],
            "kind": ["a", "b", "a", "c", "b", "a", "c", "b"],
            "price": [10.0, 12.0, 13.0, 15.0, 16.0, 18.0, 20.0, 21.0],
        }
    )


def _table_spec(prep: TablePreprocessor, task: str, classes: list[str], extra: dict | None = None) -> dict:
    return {
        "model": "mlp",
        "input_shape": [len(prep.feature_names)],
        "num_outputs": len(classes) if classes else 1,
        "params": {"hidden": [] if task == "regression" else [8]},
        "task": task,
        "classes": classes,
        "preprocessing": {"kind": "table", **prep.to_dict(), **(extra or {})},
    }


def _new_rows() -> pd.DataFrame:
    """Raw rows as a user sends them: an unseen colour, a missing number, a missing colour, an extra column."""
    return pd.DataFrame(
        {
            "id": [100, 101, 102],
            "size": [3.5, None, 9.0],
            "weight": [2.0, 1.0, None],
            "colour": ["purple", "red", None],
            "note": ["x", "y", "z"],
        }
    )


def test_a_table_classifier_predicts_raw_rows_as_the_network_does(tracking_server: str, unique_name: str) -> None:
    table = _table().drop(columns=["price"])
    prep = TablePreprocessor.fit(table, "kind")
    classes = ["a", "b", "c"]
    spec = _table_spec(prep, "classification", classes)
    torch.manual_seed(1)
    network = create_model("mlp", input_shape=tuple(spec["input_shape"]), num_outputs=3, params=spec["params"]).eval()
    with Tracker(unique_name, tracking_server).run("train") as run:
        uri = log_model(run.run_id, tracking_uri=run.tracking_uri, model=network, spec=spec, input_example=table.head(3))
    model = mlflow.pyfunc.load_model(uri)
    assert [c.name for c in model.metadata.get_input_schema().inputs] == ["size", "weight", "colour"]  # no target, no id
    rows = _new_rows()
    out = model.predict(rows)
    check_classification(out, classes, len(rows))
    with torch.no_grad():
        expected = torch.softmax(network(torch.from_numpy(prep.transform(rows))).double(), dim=1).numpy()
    np.testing.assert_allclose(out[["prob_a", "prob_b", "prob_c"]].to_numpy(), expected, atol=1e-6)
    with pytest.raises(MlflowException, match=r"missing inputs.*'colour'"):
        model.predict(rows.drop(columns=["colour"]))


def test_a_regression_prediction_is_in_the_targets_units(tracking_server: str, unique_name: str) -> None:
    table = _table().drop(columns=["kind"])
    prep = TablePreprocessor.fit(table, "price")
    spec = _table_spec(prep, "regression", [], {"target_mean": 10.0, "target_std": 4.0})
    network = create_model("mlp", input_shape=tuple(spec["input_shape"]), num_outputs=1, params=spec["params"])
    with torch.no_grad():  # a constant network: standardised output 0.5 everywhere
        for parameter in network.parameters():
            parameter.zero_()
        network.head.bias.fill_(0.5)
    with Tracker(unique_name, tracking_server).run("train") as run:
        uri = log_model(run.run_id, tracking_uri=run.tracking_uri, model=network, spec=spec, input_example=table.head(2))
    out = mlflow.pyfunc.load_model(uri).predict(_new_rows())
    assert list(out.columns) == ["prediction"]
    np.testing.assert_allclose(out["prediction"], 10.0 + 0.5 * 4.0)


def test_a_spec_that_contradicts_itself_is_refused() -> None:
    with pytest.raises(ValueError, match="2 classes but num_outputs 3"):
        check_spec({**IMAGE_SPEC, "classes": ["a", "b"]})
    with pytest.raises(ValueError, match=r"input_shape \[3, 8, 8\] does not match its preprocessing"):
        check_spec({**IMAGE_SPEC, "input_shape": [3, 8, 8]})
    with pytest.raises(ValueError, match="lacks preprocessing"):
        check_spec({k: v for k, v in IMAGE_SPEC.items() if k != "preprocessing"})


# -- mlflow models serve -----------------------------------------------------------------------------


@pytest.fixture
def served(image_model: LoggedImageModel, tracking_server: str, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", image_model.uri, "--env-manager", "local"]
    server = subprocess.Popen(
        [*command, "--port", str(port), "--host", "127.0.0.1"],
        # `serve` shells out to `uvicorn` by name: this interpreter's scripts must be on PATH (as in an activated venv).
        env={
            **os.environ,
            "MLFLOW_TRACKING_URI": tracking_server,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        },
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: uvicorn's workers go down with it
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            assert time.monotonic() < deadline, f"no /ping answer in 120 s: {(tmp_path / 'serve.log').read_text()[-3000:]}"
            with contextlib.suppress(subprocess.TimeoutExpired):  # a server that dies ends the wait at once
                server.wait(timeout=0.5)
            assert server.poll() is None, f"mlflow models serve exited: {(tmp_path / 'serve.log').read_text()[-3000:]}"
        yield url
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
        log.close()


@pytest.mark.slow
def test_mlflow_models_serve_answers_a_json_request(served: str, image_model: LoggedImageModel) -> None:
    body = json.dumps({"dataframe_split": {"columns": ["image"], "data": [[b64(image_model.paths[3])]]}}).encode()
    request = urllib.request.Request(f"{served}/invocations", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as reply:
        answer = json.loads(reply.read())
    (row,) = answer["predictions"]
    assert set(row) == {"label", "index", *(f"prob_{c}" for c in CLASSES)}
    assert row["label"] == CLASSES[row["index"]]
    assert sum(row[f"prob_{c}"] for c in CLASSES) == pytest.approx(1.0)
    local = mlflow.pyfunc.load_model(image_model.uri).predict(pd.DataFrame({"image": [image_model.paths[3]]}))
    assert row["label"] == local["label"].iloc[0]

    page = base64.b64encode(b"<html><body>not an image</body></html>").decode()
    body = json.dumps({"dataframe_split": {"columns": ["image"], "data": [[b64(image_model.paths[0])], [page]]}}).encode()
    request = urllib.request.Request(f"{served}/invocations", data=body, headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    assert refused.value.code == 400
    assert "row 1 is not an image (an HTML page)" in json.loads(refused.value.read())["message"]
