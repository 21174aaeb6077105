"""The promotion rule: checks passed, and a win by at least the margin in the metric's direction."""

from __future__ import annotations

import math

import pytest

from trainwise.promotion import FIRST_CHAMPION, KEPT, PROMOTED, Candidate, decide, gain


def accuracy(challenger: Candidate, champion: Candidate | None, margin: float = 0.01):
    return decide(challenger, champion, metric="accuracy", direction="maximize", margin=margin)


def test_with_no_champion_a_challenger_that_passed_its_checks_becomes_the_first() -> None:
    decision = accuracy(Candidate("1", 0.5, checks_passed=True), None)
    assert decision.outcome == FIRST_CHAMPION and decision.promote
    assert decision.gain is None and "v1" in decision.reason and "0.5000" in decision.reason


def test_a_challenger_that_failed_its_checks_is_never_promoted() -> None:
    better = Candidate("2", 0.99, checks_passed=False)
    decision = accuracy(better, Candidate("1", 0.80, checks_passed=True))
    assert decision.outcome == KEPT and not decision.promote
    assert "did not pass its pipeline checks" in decision.reason and "champion v1 stays" in decision.reason
    first = accuracy(better, None)  # not even as the first champion
    assert first.outcome == KEPT and "still no champion" in first.reason


def test_a_win_by_more_than_the_margin_promotes() -> None:
    decision = accuracy(Candidate("2", 0.95, checks_passed=True), Candidate("1", 0.90, checks_passed=True))
    assert decision.outcome == PROMOTED and decision.promote
    assert decision.gain == pytest.approx(0.05)
    assert "v2" in decision.reason and "v1" in decision.reason and "0.9500" in decision.reason and "0.9000" in decision.reason


def test_a_win_by_exactly_the_margin_promotes_despite_rounding() -> None:
    assert 0.815 - 0.805 < 0.01  # the subtraction comes out short of the margin it equals
    decision = accuracy(Candidate("2", 0.815, checks_passed=True), Candidate("1", 0.805, checks_passed=True), margin=0.01)
    assert decision.outcome == PROMOTED


def test_a_win_by_less_than_the_margin_keeps_the_champion() -> None:
    decision = accuracy(Candidate("2", 0.905, checks_passed=True), Candidate("1", 0.90, checks_passed=True))
    assert decision.outcome == KEPT and not decision.promote
    assert decision.gain == pytest.approx(0.005) and "less than the margin 0.01" in decision.reason


def test_a_loss_or_a_tie_keeps_the_champion_even_with_no_margin() -> None:
    lost = accuracy(Candidate("2", 0.85, checks_passed=True), Candidate("1", 0.90, checks_passed=True), margin=0.0)
    assert lost.outcome == KEPT and lost.gain == pytest.approx(-0.05) and "does not beat" in lost.reason
    tie = accuracy(Candidate("2", 0.90, checks_passed=True), Candidate("1", 0.90, checks_passed=True), margin=0.0)
    assert tie.outcome == KEPT


def test_a_metric_to_minimise_wins_by_going_down() -> None:
    def rmse(challenger: float, champion: float):
        return decide(Candidate("2", challenger, True), Candidate("1", champion, True), metric="rmse", direction="minimize", margin=1.0)

    lower = rmse(52.0, 55.0)
    assert lower.outcome == PROMOTED and lower.gain == pytest.approx(3.0)
    assert rmse(54.5, 55.0).outcome == KEPT  # lower, by less than the margin
    higher = rmse(58.0, 55.0)
    assert higher.outcome == KEPT and higher.gain == pytest.approx(-3.0)
    assert gain(52.0, 55.0, "minimize") == -gain(52.0, 55.0, "maximize")


def test_the_champion_against_itself_and_unscored_challengers_are_kept() -> None:
    same = accuracy(Candidate("3", 0.9, checks_passed=True), Candidate("3", 0.9, checks_passed=True))
    assert same.outcome == KEPT and "already the champion" in same.reason
    unscored = accuracy(Candidate("4", math.nan, checks_passed=True), None)
    assert unscored.outcome == KEPT and "NaN" in unscored.reason


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="direction"):
        decide(Candidate("2", 1.0, True), Candidate("1", 0.0, True), metric="accuracy", direction="up", margin=0.0)
    with pytest.raises(ValueError, match="margin"):
        accuracy(Candidate("2", 1.0, True), None, margin=-0.1)
