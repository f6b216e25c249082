"""vqa_accuracy and answer normalisation on hand-worked cases."""

import pytest

from mixphm import vqa_accuracy
from mixphm.evaluation import (
    ARTICLES,
    CONTRACTIONS,
    NUMBER_WORDS,
    PUNCTUATION,
    Scored,
    exact_match,
    normalize_answer,
    summarize,
)


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("Yes!", "yes"),  # punctuation removed
        ("black-and-white", "black and white"),  # joining punctuation becomes a space
        ("dog , cat", "dog cat"),  # punctuation beside a space is dropped
        ("1,000", "1000"),  # comma between digits
        ("3.5", "3.5"),  # decimal point kept
        ("Two dogs.", "2 dogs"),  # final period dropped, number word, lower case
        ("none", "0"),
        ("The cat", "cat"),  # articles
        ("an apple a day", "apple day"),
        ("dont know", "don't know"),  # contractions regain their apostrophe
        ("Dont", "don't"),  # looked up after lower-casing
        ("couldnt've", "couldn't've"),  # the official table's two spellings...
        ("couldn'tve", "couldn't've"),
        ("couldntve", "couldntve"),  # ...and not this one
        ("twas", "'twas"),
        ("im", "im"),  # the table's keys "Im" and "Ive" never match lower-cased words
        ("Ive", "ive"),
        ("somebody'd", "somebodyd"),  # the table's own entry, kept as it is
        ("its", "its"),  # ordinary words are not contractions
        ("one-way", "1 way"),  # punctuation first, then number words
        ("NONE.", "0"),
        ("  red\tand\nblue ", "red and blue"),
    ],
)
def test_normalisation_rules(raw, normalised):
    assert normalize_answer(raw) == normalised


def test_ten_answers_give_the_official_steps():
    # matches among 10 answers → accuracy: 0 → 0, 1 → 0.3, 2 → 0.6, 3 → 0.9, ≥ 4 → 1
    expected = {0: 0.0, 1: 0.3, 2: 0.6, 3: 0.9, 4: 1.0, 10: 1.0}
    for matches, accuracy in expected.items():
        answers = ["cat"] * matches + ["dog"] * (10 - matches)
        assert vqa_accuracy("cat", answers) == pytest.approx(accuracy)


def test_held_out_averaging_by_hand():
    # 3 of 10 say "2": holding out one of them leaves 2 matches (2/3), holding out any of
    # the other 7 leaves 3 (1): (3 · 2/3 + 7 · 1) / 10 = 0.9
    assert vqa_accuracy("2", ["2"] * 3 + ["3"] * 7) == pytest.approx(0.9)


def test_the_tables_are_the_official_ones():
    # vqaEval.py (GT-Vision-Lab/VQA, commit c4e6a0e): 120 contractions, 21 punctuation marks
    # in this order, the number words zero to ten and "none", three articles
    assert len(CONTRACTIONS) == 120
    assert CONTRACTIONS["yall'd've"] == "y'all'd've" and CONTRACTIONS["let's"] == "let's"
    assert {k for k in CONTRACTIONS if k != k.lower()} == {"Id've", "I'dve", "Im", "Ive"}
    assert "".join(PUNCTUATION) == ';/[]"{}()=+\\_-><@`,?!'
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    assert {"none": "0", **{w: str(i) for i, w in enumerate(words)}} == NUMBER_WORDS
    assert sorted(ARTICLES) == ["a", "an", "the"]


def test_normalisation_applies_to_both_sides():
    # a deliberate departure: the official script gives the human answers only its
    # punctuation step (and only when they differ), so there "2" scores 0 against ten "two"

    assert vqa_accuracy("Two.", ["2"] * 10) == 1.0
    assert vqa_accuracy("2", ["two"] * 10) == 1.0
    assert vqa_accuracy("the red one", ["red one"] * 2 + ["blue"] * 8) == pytest.approx(0.6)


def test_ties_between_answers():
    # 5 "yes", 5 "no": either prediction has 5 matches → 1.0; a third answer scores 0
    answers = ["yes"] * 5 + ["no"] * 5
    assert vqa_accuracy("yes", answers) == vqa_accuracy("no", answers) == 1.0
    assert vqa_accuracy("maybe", answers) == 0.0


def test_short_answer_lists():
    # 3 identical answers: each held out leaves 2 matches → 2/3
    assert vqa_accuracy("cat", ["cat"] * 3) == pytest.approx(2 / 3)
    # 4 answers, 2 match: (2 · 1/3 + 2 · 2/3) / 4 = 0.5
    assert vqa_accuracy("cat", ["cat", "cat", "dog", "cow"]) == pytest.approx(0.5)
    # a single answer is exact match
    assert vqa_accuracy("A cat", ["cat"]) == 1.0
    assert vqa_accuracy("dog", ["cat"]) == 0.0
    with pytest.raises(ValueError, match="at least one human answer"):
        vqa_accuracy("cat", [])


def test_exact_match_normalises():
    assert exact_match("The Woman.", "woman") == 1.0
    assert exact_match("man", "woman") == 0.0


def test_breakdown_per_type():
    report = summarize(
        [
            Scored(1.0, "how many", "number"),
            Scored(0.0, "how many", "number"),
            Scored(0.6, "what color is the", "other"),
        ]
    )
    assert report.count == 3
    assert report.overall == pytest.approx(100 * 1.6 / 3)
    assert report.per_question_type == pytest.approx({"how many": 50.0, "what color is the": 60.0})
    assert report.per_answer_type == pytest.approx({"number": 50.0, "other": 60.0})
