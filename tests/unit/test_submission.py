"""Submission files: a valid one passes; each bad one is rejected, naming the offending ids. Real CSVs in tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trainwise.errors import TrainwiseError
from trainwise.submission import (
    MAX_NAMED,
    SubmissionError,
    SubmissionSpec,
    build_submission,
    read_answers,
    score_submission,
    submission_spec,
    validate_file,
    write_submission,
)

CLASSES = [str(d) for d in range(10)]
IDS = [f"t{i:04d}" for i in range(12)]


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def label_spec(tmp_path: Path, **kwargs: object) -> SubmissionSpec:
    """The digits project's spec: id,label from a sample submission listing IDS."""
    sample = write_csv(tmp_path / "sample_submission.csv", "id,label\n" + "".join(f"{i},0\n" for i in IDS))
    settings = {"id_column": "id", "target_column": "label", "kind": "label", "classes": CLASSES, "ids": IDS, "sample": sample}
    return submission_spec(**(settings | kwargs))  # type: ignore[arg-type]


def labels_file(tmp_path: Path, rows: list[tuple[str, str]], header: str = "id,label") -> Path:
    return write_csv(tmp_path / "submission.csv", header + "\n" + "".join(f"{i},{label}\n" for i, label in rows))


def valid_rows() -> list[tuple[str, str]]:
    return [(item, str(n % 10)) for n, item in enumerate(IDS)]


def test_a_valid_submission_passes(tmp_path: Path) -> None:
    frame = validate_file(labels_file(tmp_path, valid_rows()), label_spec(tmp_path))
    assert frame["id"].tolist() == IDS and frame["label"].tolist()[:3] == ["0", "1", "2"]


def test_submission_error_is_a_user_error() -> None:
    assert issubclass(SubmissionError, TrainwiseError)


def test_a_missing_id_is_named(tmp_path: Path) -> None:
    rows = [row for row in valid_rows() if row[0] != "t0003"]
    with pytest.raises(SubmissionError, match=r"11 rows but 12 expected.*1 missing \(t0003\)"):
        validate_file(labels_file(tmp_path, rows), label_spec(tmp_path))


def test_a_duplicate_id_is_named(tmp_path: Path) -> None:
    rows = valid_rows()
    rows[5] = ("t0004", "4")  # t0004 twice, t0005 gone: the row count is right
    with pytest.raises(SubmissionError, match=r"ids do not match.*1 missing \(t0005\); 1 repeated \(t0004\)"):
        validate_file(labels_file(tmp_path, rows), label_spec(tmp_path))


def test_an_extra_id_is_named(tmp_path: Path) -> None:
    rows = valid_rows()
    rows[7] = ("x9999", "7")
    with pytest.raises(SubmissionError, match=r"1 missing \(t0007\); 1 unexpected \(x9999\)"):
        validate_file(labels_file(tmp_path, rows), label_spec(tmp_path))


@pytest.mark.parametrize("cell", ["", "nan", "NaN", "NA"])
def test_a_missing_value_is_named(tmp_path: Path, cell: str) -> None:
    rows = valid_rows()
    rows[2] = ("t0002", cell)
    with pytest.raises(SubmissionError, match=r"missing values \(NaN\) in label for ids t0002$"):
        validate_file(labels_file(tmp_path, rows), label_spec(tmp_path))


def test_a_class_named_like_a_missing_value_is_not_missing(tmp_path: Path) -> None:
    spec = label_spec(tmp_path, classes=["None", "cat"])
    validate_file(labels_file(tmp_path, [(i, "None") for i in IDS]), spec)


def test_an_unknown_label_is_named(tmp_path: Path) -> None:
    rows = valid_rows()
    rows[4] = ("t0004", "11")
    rows[9] = ("t0009", "seven")
    with pytest.raises(
        SubmissionError, match=r"not classes of this project \(known: 0, 1, .*\) for ids t0004 \('11'\), t0009 \('seven'\)"
    ):
        validate_file(labels_file(tmp_path, rows), label_spec(tmp_path))


@pytest.mark.parametrize(
    ("header", "detail"),
    [
        ("id,digit", "missing label; unexpected digit"),
        ("label,id", "same columns in another order"),
        ("ImageId,label", "missing id"),
    ],
)
def test_a_wrong_header_is_named(tmp_path: Path, header: str, detail: str) -> None:
    with pytest.raises(SubmissionError, match=rf"the header is {header} but must be id,label \({detail}"):
        validate_file(labels_file(tmp_path, valid_rows(), header=header), label_spec(tmp_path))


def test_a_wrong_row_count_names_what_is_missing_or_extra(tmp_path: Path) -> None:
    with pytest.raises(SubmissionError, match=r"9 rows but 12 expected, one per test item: 3 missing \(t0009, t0010, t0011\)"):
        validate_file(labels_file(tmp_path, valid_rows()[:9]), label_spec(tmp_path))
    with pytest.raises(SubmissionError, match=r"13 rows but 12 expected.*1 repeated \(t0000\)"):
        validate_file(labels_file(tmp_path, [*valid_rows(), ("t0000", "0")]), label_spec(tmp_path))


def test_at_most_five_ids_are_named(tmp_path: Path) -> None:
    with pytest.raises(SubmissionError, match=r"12 missing \(t0000, t0001, t0002, t0003, t0004 and 7 more\)") as raised:
        validate_file(labels_file(tmp_path, []), label_spec(tmp_path))
    assert "t0005" not in str(raised.value) and MAX_NAMED == 5


def probability_spec(tmp_path: Path) -> SubmissionSpec:
    return submission_spec(id_column="id", target_column="label", kind="probabilities", classes=["cat", "dog"], ids=IDS[:4])


def probabilities_file(tmp_path: Path, rows: list[tuple[str, str, str]]) -> Path:
    return write_csv(tmp_path / "probs.csv", "id,cat,dog\n" + "".join(f"{i},{a},{b}\n" for i, a, b in rows))


def test_probabilities_summing_to_one_pass(tmp_path: Path) -> None:
    rows = [(i, "0.25", "0.75") for i in IDS[:3]] + [(IDS[3], "0.33333333", "0.66666667")]
    validate_file(probabilities_file(tmp_path, rows), probability_spec(tmp_path))


def test_probabilities_not_summing_to_one_are_named(tmp_path: Path) -> None:
    rows = [(i, "0.25", "0.75") for i in IDS[:4]]
    rows[1] = (IDS[1], "0.5", "0.4")
    rows[3] = (IDS[3], "0.5", "0.5002")  # beyond the 1e-4 tolerance
    with pytest.raises(
        SubmissionError, match=r"do not sum to 1 \(tolerance 0.0001\) for ids t0001 \(sum 0.9\), t0003 \(sum 1.0002\)"
    ):
        validate_file(probabilities_file(tmp_path, rows), probability_spec(tmp_path))


def test_probabilities_outside_zero_one_or_not_numbers_are_named(tmp_path: Path) -> None:
    rows = [(i, "0.25", "0.75") for i in IDS[:4]]
    rows[2] = (IDS[2], "-0.5", "1.5")
    with pytest.raises(SubmissionError, match=r"outside \[0, 1\] for ids t0002$"):
        validate_file(probabilities_file(tmp_path, rows), probability_spec(tmp_path))
    rows[2] = (IDS[2], "high", "0.75")
    with pytest.raises(SubmissionError, match=r"not finite numbers for ids t0002$"):
        validate_file(probabilities_file(tmp_path, rows), probability_spec(tmp_path))


def index_spec() -> SubmissionSpec:
    return submission_spec(id_column="id", target_column="label", kind="index", classes=CLASSES, ids=IDS)


def test_an_index_out_of_range_is_named(tmp_path: Path) -> None:
    rows = valid_rows()
    validate_file(labels_file(tmp_path, rows), index_spec())
    rows[1], rows[6], rows[8] = ("t0001", "10"), ("t0006", "-1"), ("t0008", "2.0")
    with pytest.raises(
        SubmissionError, match=r"integers in 0..9; not so for ids t0001 \('10'\), t0006 \('-1'\), t0008 \('2.0'\)"
    ):
        validate_file(labels_file(tmp_path, rows), index_spec())


def test_regression_values_must_be_finite_numbers(tmp_path: Path) -> None:
    spec = submission_spec(id_column="id", target_column="target", kind="regression", classes=[], ids=IDS[:3])
    path = write_csv(tmp_path / "reg.csv", "id,target\nt0000,151.5\nt0001,75\nt0002,inf\n")
    with pytest.raises(SubmissionError, match=r"not finite numbers for ids t0002$"):
        validate_file(path, spec)


def test_a_sample_that_does_not_fit_the_settings_is_refused_up_front(tmp_path: Path) -> None:
    sample = write_csv(tmp_path / "sample.csv", "ImageId,Label\n1,0\n")
    with pytest.raises(SubmissionError, match=r"header ImageId,Label does not fit the submission settings, which give id,label"):
        submission_spec(id_column="id", target_column="label", kind="label", classes=CLASSES, ids=["1"], sample=sample)
    repeated = write_csv(tmp_path / "repeated.csv", "id,label\na,0\nb,0\na,0\n")
    with pytest.raises(SubmissionError, match=r"repeats ids a$"):
        submission_spec(id_column="id", target_column="label", kind="label", classes=CLASSES, ids=["a", "b"], sample=repeated)


def model_output(classes: list[str], probabilities: np.ndarray) -> pd.DataFrame:
    """What the served model returns (serving.py): label, index, prob_<class>."""
    best = probabilities.argmax(axis=1)
    frame = pd.DataFrame({"label": [classes[i] for i in best], "index": best})
    for position, name in enumerate(classes):
        frame[f"prob_{name}"] = probabilities[:, position]
    return frame


def test_built_submissions_follow_the_sample_order_and_pass_in_every_format(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(10), size=len(IDS))
    items = list(reversed(IDS))  # the test items in another order than the sample
    output = model_output(CLASSES, probabilities)
    for kind, header in (("label", ["id", "label"]), ("index", ["id", "label"]), ("probabilities", ["id", *CLASSES])):
        sample = tmp_path / f"sample_{kind}.csv"
        pd.DataFrame({"id": IDS, **{c: 0 for c in header[1:]}}).to_csv(sample, index=False)
        spec = submission_spec(id_column="id", target_column="label", kind=kind, classes=CLASSES, ids=items, sample=sample)  # type: ignore[arg-type]
        written = validate_file(write_submission(build_submission(spec, items, output), tmp_path / f"{kind}.csv"), spec)
        assert written.columns.tolist() == header and written["id"].tolist() == IDS
        answers = pd.DataFrame({"id": items, "answer": output["label"]})
        score = score_submission(written, spec, answers)
        assert score.value == 1.0
        if kind == "probabilities":  # log loss, textbook: the mean -ln p of each id's answer, whatever the row order
            by_id = dict(zip(items, probabilities, strict=True))
            true_class = {i: CLASSES.index(a) for i, a in zip(items, output["label"], strict=True)}
            expected = -np.mean([np.log(by_id[i][true_class[i]]) for i in items])
            assert score.also["submission_log_loss"] == pytest.approx(expected, rel=1e-9)
        else:
            assert score.also == {}


def test_a_model_of_other_classes_is_refused(tmp_path: Path) -> None:
    output = model_output(["cat", "dog"], np.array([[0.2, 0.8]]))
    spec = submission_spec(id_column="id", target_column="label", kind="label", classes=CLASSES, ids=["a"])
    with pytest.raises(SubmissionError, match=r"the model predicts classes cat, dog but this project's are 0, 1, 2"):
        build_submission(spec, ["a"], output)


def test_scores_against_hidden_answers(tmp_path: Path) -> None:
    spec = label_spec(tmp_path)
    written = validate_file(labels_file(tmp_path, valid_rows()), spec)
    truth = [label if n % 4 else "9" for n, (_, label) in enumerate(valid_rows())]  # every 4th answer differs (none is a 9)
    answers = write_csv(tmp_path / "answers.csv", "id,label\n" + "".join(f"{i},{a}\n" for i, a in zip(IDS, truth, strict=True)))
    score = score_submission(written, spec, read_answers(answers, spec))
    assert score.metric == "submission_accuracy" and score.rows == 12 and score.value == pytest.approx(9 / 12)

    reg = submission_spec(id_column="id", target_column="target", kind="regression", classes=[], ids=IDS[:2])
    path = write_csv(tmp_path / "reg.csv", "id,target\nt0000,10\nt0001,20\n")
    rmse = score_submission(validate_file(path, reg), reg, pd.DataFrame({"id": IDS[:2], "answer": [13.0, 16.0]}))
    assert rmse.metric == "submission_rmse" and rmse.value == pytest.approx(np.sqrt((9 + 16) / 2))


def test_log_loss_of_classes_in_any_column_order_is_the_textbook_one(tmp_path: Path) -> None:
    """A sample submission whose class columns are not in sorted order (Kaggle's often are not)."""
    classes = ["wolf", "cat", "emu"]
    spec = submission_spec(id_column="id", target_column="label", kind="probabilities", classes=classes, ids=["a", "b"])
    frame = pd.DataFrame({"id": ["a", "b"], "wolf": [0.7, 0.1], "cat": [0.2, 0.3], "emu": [0.1, 0.6]})
    answers = pd.DataFrame({"id": ["a", "b"], "answer": ["wolf", "emu"]})
    score = score_submission(frame, spec, answers)
    assert score.also["submission_log_loss"] == pytest.approx(-(np.log(0.7) + np.log(0.6)) / 2)
