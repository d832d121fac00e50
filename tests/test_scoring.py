"""The benchmarks' answer scoring on hand-checked fixtures: the VQA normalisation's hard cases and
leave-one-out accuracy, GQA, POPE, option letters, and MMBench's circular evaluation."""

from __future__ import annotations

import pytest

from mmtune.evaluation.scoring import (
    choice_letter,
    circular_scores,
    gqa_match,
    normalize_vqa_answer,
    pope_answer,
    pope_scores,
    vqa_accuracy,
    vqa_exact_match,
)


@pytest.mark.parametrize("raw, normalized", [
    ("two", "2"), ("Two", "2"), ("none", "0"), ("a dog", "dog"), ("The Dog.", "dog"), ("an apple", "apple"),
    ("yes.", "yes"), ("Yes!", "yes"), ("dont", "don't"), ("isnt it", "isn't it"), ("3.5", "3.5"),
    ("5,000", "5000"), ("a red-circle", "red circle"), ("(left)", "left"), ("  Top\tLeft\n", "top left"),
])
def test_vqa_normalization_hard_cases(raw, normalized):
    assert normalize_vqa_answer(raw) == normalized


@pytest.mark.parametrize("answer, humans", [
    ("2", ["two"] * 10), ("dog", ["a dog"] * 10), ("yes", ["yes."] * 10), ("dont", ["don't"] * 10),
    ("Two dogs.", ["2 dogs"] * 10),
])
def test_vqa_accuracy_matches_after_normalisation(answer, humans):
    assert vqa_accuracy(answer, humans) == 1.0


def test_vqa_accuracy_averages_the_ten_leave_one_out_subsets():
    humans = ["2", "two", "2", "3", "three", "2 ", "4", "2", "1", "many"]
    # "2" given by 6 humans: every subset of 9 still has >= 3 matches
    assert vqa_accuracy("Two", humans) == 1.0
    # "3" given by 2: leaving out one of them leaves 1 match (1/3), leaving out another leaves 2 (2/3)
    assert vqa_accuracy("3", humans) == pytest.approx((2 * 1 / 3 + 8 * 2 / 3) / 10)
    # "4" given by 1: 0 when that human is left out, 1/3 otherwise
    assert vqa_accuracy("four", humans) == pytest.approx(9 / 10 * 1 / 3)
    # three humans agree: 2/3 when one of them is left out, 1 otherwise
    assert vqa_accuracy("cat", ["cat"] * 3 + ["dog"] * 7) == pytest.approx((3 * 2 / 3 + 7) / 10)
    assert vqa_accuracy("five", humans) == 0.0 and vqa_accuracy("x", []) == 0.0


def test_vqa_exact_match_against_majority():
    assert vqa_exact_match("two", ["2", "2", "3"]) == 1.0
    assert vqa_exact_match("three", ["2", "2", "3"]) == 0.0
    assert vqa_exact_match("yes", []) == 0.0


def test_gqa_exact_match_after_normalisation():
    assert gqa_match("Yes.", "yes") == 1.0 and gqa_match(" Cup ", "cup") == 1.0
    assert gqa_match("a cup", "cup") == 0.0  # GQA keeps articles: exact match


@pytest.mark.parametrize("answer, label", [
    ("Yes", "yes"), ("No", "no"), ("no.", "no"), ("There is not a dog.", "no"), ("Yes, there is.", "yes"),
    ("Yes. There is no cat though.", "yes"), ("I see no, cat", "no"), ("Nope", "yes"),
])
def test_pope_answer_reading(answer, label):
    assert pope_answer(answer) == label


def test_pope_scores_hand_checked():
    answers = ["yes", "No", "yes", "yes", "no", "There is no car."]
    labels = ["yes", "yes", "no", "yes", "no", "no"]
    # predicted yes: 1, 3, 4 -> tp 2 (1, 4), fp 1 (3); fn 1 (2); tn 2 (5, 6)
    scores = pope_scores(answers, labels)
    assert scores["accuracy"] == pytest.approx(4 / 6)
    assert scores["precision"] == pytest.approx(2 / 3) and scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(2 / 3) and scores["yes_ratio"] == pytest.approx(3 / 6)
    assert pope_scores(["no", "no"], ["no", "yes"])["precision"] == 0.0


@pytest.mark.parametrize("answer, letter", [
    ("B", "B"), ("B.", "B"), ("(B) blue", "B"), ("B: blue", "B"), ("The answer is C.", "C"), ("blue", "B"),
    ("Blue.", "B"), ("E", None), ("Because it is red", None), ("", None),
])
def test_choice_letter(answer, letter):
    assert choice_letter(answer, ["red", "blue", "green"]) == letter


def test_circular_evaluation_hand_checked():
    rounds = [("1", "color", True), ("1", "color", True), ("1", "color", True),  # all right: passes
              ("2", "color", True), ("2", "color", False),                       # one rotation wrong
              ("3", "count", False), ("3", "count", True),                       # first wrong
              ("4", "count", True), ("4", "count", True)]
    scores = circular_scores(rounds)
    assert scores["accuracy"] == pytest.approx(2 / 4) and scores["count"] == 4
    assert scores["single_pass_accuracy"] == pytest.approx(3 / 4)
    assert scores["by_category"] == {"color": 0.5, "count": 0.5}


def test_pope_task_reports_each_split_and_their_mean():
    from mmtune.data.records import Message, Record
    from mmtune.evaluation.runner import EvalItem
    from mmtune.evaluation.tasks import score_pope

    def item(split: str, label: str, answer: str) -> EvalItem:
        made = EvalItem(Record(messages=(Message("user", "q"),)), [label], kind=split)
        made.prediction = answer
        return made

    items = [item("random", "yes", "yes"), item("random", "no", "no"),
             item("adversarial", "yes", "yes"), item("adversarial", "no", "yes")]
    scores = score_pope(items)
    assert scores["by_split"]["random"]["accuracy"] == 1.0 and scores["by_split"]["adversarial"]["accuracy"] == 0.5
    assert scores["accuracy"] == pytest.approx(0.75) and scores["f1"] == pytest.approx((1.0 + 2 / 3) / 2)
