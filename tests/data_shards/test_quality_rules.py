"""Gopher, C4 and FineWeb rules on hand-made documents at, just under and just over each threshold.

As published (and in datatrove): a ``max`` ratio drops strictly above it and a ``min`` strictly below
it, so a document exactly at a threshold is kept.
"""

import random
from collections import Counter

import pytest

from data_shards.config import C4, FineWeb, GopherQuality, GopherRepetition
from data_shards.quality import c4, fineweb, gopher

NO_REPETITION_RULES = dict(
    dup_line_frac=1, dup_para_frac=1, dup_line_char_frac=1, dup_para_char_frac=1, top_ngrams={}, dup_ngrams={}
)
LENIENT_QUALITY = dict(min_words=0, min_stop_words=0, min_mean_word_length=0, max_mean_word_length=100)


def padded(text: str, total: int) -> str:
    """``text`` and one long filler word, ``total`` characters in all."""
    return text + " " + "z" * (total - len(text) - 1)


def kept(rule, text: str) -> bool:
    return rule(text) is not None


@pytest.mark.parametrize(("total", "keep"), [(100, True), (101, True), (99, False)])
def test_top_bigram_share_of_characters(total, keep):
    rule = gopher.repetition_rule(GopherRepetition(**{**NO_REPETITION_RULES, "top_ngrams": {2: 0.2}}))
    assert kept(rule, padded("ab cd ab cd ab cd ab cd", total)) is keep  # "ab cd" x4: 20 characters


@pytest.mark.parametrize(("total", "keep"), [(100, True), (101, True), (99, False)])
def test_duplicate_5gram_characters_count_each_repeat_once(total, keep):
    rule = gopher.repetition_rule(GopherRepetition(**{**NO_REPETITION_RULES, "dup_ngrams": {5: 0.15}}))
    assert gopher.duplicate_ngram_chars(gopher.WordGrams("aaa bbb ccc ddd eee aaa bbb ccc ddd eee".split()), 5) == 15
    assert kept(rule, padded("aaa bbb ccc ddd eee aaa bbb ccc ddd eee", total)) is keep


@pytest.mark.parametrize(("repeats", "keep"), [(2, True), (3, True), (4, False)])
def test_duplicate_line_fraction(repeats, keep):
    rule = gopher.repetition_rule(GopherRepetition(**{**NO_REPETITION_RULES, "dup_line_frac": 0.3}))
    lines = [f"unique line {i}" for i in range(9 - repeats)] + ["same line"] * (repeats + 1)
    assert kept(rule, "\n".join(lines)) is keep  # 3 of 10 repeat an earlier line: 0.3


@pytest.mark.parametrize(("repeats", "keep"), [(3, True), (4, False)])
def test_duplicate_paragraph_fraction(repeats, keep):
    rule = gopher.repetition_rule(GopherRepetition(**{**NO_REPETITION_RULES, "dup_para_frac": 0.3}))
    paragraphs = [f"paragraph {i}\nline two" for i in range(9 - repeats)] + ["same\nparagraph"] * (repeats + 1)
    assert kept(rule, "\n\n".join(paragraphs)) is keep


def test_repetition_defaults_keep_prose_and_drop_boilerplate():
    rule = gopher.repetition_rule(GopherRepetition())
    prose = " ".join(f"word{i}" for i in range(300))
    assert kept(rule, prose)
    assert not kept(rule, "buy now and save big today " * 30)


@pytest.mark.parametrize(("count", "keep"), [(50, True), (49, False), (51, True)])
def test_gopher_minimum_word_count(count, keep):
    rule = gopher.quality_rule(GopherQuality(**{**LENIENT_QUALITY, "min_words": 50}))
    assert kept(rule, " ".join(["word"] * count) + " .") is keep  # "." is a symbol, not a word


@pytest.mark.parametrize(("count", "keep"), [(10, True), (11, False)])
def test_gopher_maximum_word_count(count, keep):
    assert kept(gopher.quality_rule(GopherQuality(**{**LENIENT_QUALITY, "max_words": 10})), " ".join(["w"] * count)) is keep


@pytest.mark.parametrize(("short", "keep"), [(0, True), (1, False)])
def test_gopher_mean_word_length_lower_bound(short, keep):
    rule = gopher.quality_rule(GopherQuality(**{**LENIENT_QUALITY, "min_mean_word_length": 3}))
    assert kept(rule, " ".join(["abc"] * (10 - short) + ["ab"] * short)) is keep  # mean 3.0 or 2.9


@pytest.mark.parametrize(("long", "keep"), [(0, True), (1, False)])
def test_gopher_mean_word_length_upper_bound(long, keep):
    rule = gopher.quality_rule(GopherQuality(**{**LENIENT_QUALITY, "max_mean_word_length": 10}))
    assert kept(rule, " ".join(["a" * 10] * (10 - long) + ["a" * 11] * long)) is keep


@pytest.mark.parametrize(("hashes", "keep"), [(1, True), (2, True), (3, False)])
def test_gopher_hash_symbols_per_word(hashes, keep):
    rule = gopher.quality_rule(GopherQuality(**LENIENT_QUALITY))
    assert kept(rule, " ".join(["word"] * (20 - hashes) + ["#"] * hashes)) is keep  # 2 of 20: 0.1


@pytest.mark.parametrize(("ellipses", "keep"), [(2, True), (3, False)])
def test_gopher_ellipses_per_word(ellipses, keep):
    rule = gopher.quality_rule(GopherQuality(**{**LENIENT_QUALITY, "max_ellipsis_lines_ratio": 1}))
    assert kept(rule, " ".join(["word"] * (20 - ellipses) + ["…"] * ellipses)) is keep


@pytest.mark.parametrize(("bullets", "keep"), [(8, True), (9, True), (10, False)])
def test_gopher_bullet_lines(bullets, keep):
    rule = gopher.quality_rule(GopherQuality(**LENIENT_QUALITY))
    lines = ["• alpha beta gamma delta epsilon zeta eta"] * bullets + ["alpha beta gamma"] * (10 - bullets)
    assert kept(rule, "\n".join(lines)) is keep


@pytest.mark.parametrize(("trailing", "keep"), [(3, True), (4, False)])
def test_gopher_lines_ending_in_an_ellipsis(trailing, keep):
    rule = gopher.quality_rule(GopherQuality(**{**LENIENT_QUALITY, "max_symbol_word_ratio": 1}))
    lines = ["alpha beta gamma delta epsilon zeta eta theta…"] * trailing + ["alpha beta gamma"] * (10 - trailing)
    assert kept(rule, "\n".join(lines)) is keep


@pytest.mark.parametrize(("numbers", "keep"), [(2, True), (3, False)])
def test_gopher_words_with_a_letter(numbers, keep):
    rule = gopher.quality_rule(GopherQuality(**LENIENT_QUALITY))
    assert kept(rule, " ".join(["word"] * (10 - numbers) + ["1234"] * numbers)) is keep  # 8 of 10: 0.8


@pytest.mark.parametrize(("text", "keep"), [("the cat of mine", True), ("the cat the mat", False), ("a cat", False)])
def test_gopher_needs_two_distinct_stop_words(text, keep):
    rule = gopher.quality_rule(GopherQuality(**{**LENIENT_QUALITY, "min_stop_words": 2}))
    assert kept(rule, text) is keep


def test_gopher_quality_defaults_keep_an_ordinary_paragraph():
    text = (
        "The history of the city goes back to the Roman period, when a small fort was built on the river. "
        "Over the following centuries it grew into a market town with a cathedral and a university, and "
        "today it is known for its museums, its parks and the old bridge that connects both banks of the river."
    )
    assert kept(gopher.quality_rule(GopherQuality()), text)


SENTENCE = "This line has enough words."


@pytest.mark.parametrize(("sentences", "keep"), [(5, True), (6, True), (4, False)])
def test_c4_minimum_sentences(sentences, keep):
    assert kept(c4.rule(C4()), "\n".join([SENTENCE] * sentences)) is keep


def test_c4_removes_lines_it_does_not_want_and_keeps_the_rest():
    lines = [
        SENTENCE,
        "No terminal punctuation here",
        "Trailing off like this...",
        "Two words.",
        "Please enable JavaScript to view this page.",
        "We use cookies to improve your experience.",
        "A citation follows here.[1]",
        "A " + "x" * 1001 + " word.",
        "A " + "y" * 1000 + " word.",
        *[SENTENCE] * 3,
    ]
    out = c4.rule(C4())("\n".join(lines))
    assert out.split("\n") == [SENTENCE, "A citation follows here.", "A " + "y" * 1000 + " word.", *[SENTENCE] * 3]


@pytest.mark.parametrize("poison", ["Lorem ipsum dolor sit amet.", "The set {1, 2} is small."])
def test_c4_drops_documents_with_lorem_ipsum_or_a_curly_bracket(poison):
    assert not kept(c4.rule(C4()), "\n".join([SENTENCE] * 5 + [poison]))


def test_c4_counts_every_sentence_of_a_line():
    assert kept(c4.rule(C4()), "One here. Two here! Three here? Four here. Five here.")
    assert not kept(c4.rule(C4()), "One here. Two here! Three here? Four here.")


def _fineweb_lines(count: int, punctuated: int) -> list[str]:
    return [f"line {i} holds several different words" + ("." if i < punctuated else "") for i in range(count)]


@pytest.mark.parametrize(("punctuated", "keep"), [(3, True), (4, True), (2, False)])
def test_fineweb_share_of_lines_ending_in_punctuation(punctuated, keep):
    assert kept(fineweb.rule(FineWeb()), "\n".join(_fineweb_lines(25, punctuated))) is keep  # 3 of 25: 0.12


def test_fineweb_all_unpunctuated_lines_pass_only_when_zero_is_excluded():
    text = "\n".join(_fineweb_lines(25, 0))
    assert not kept(fineweb.rule(FineWeb()), text)
    assert kept(fineweb.rule(FineWeb(line_punct_exclude_zero=True)), text)


@pytest.mark.parametrize(("short", "keep"), [(66, True), (67, True), (68, False)])
def test_fineweb_share_of_short_lines(short, keep):
    lines = [f"short {i} a b." for i in range(short)] + _fineweb_lines(100 - short, 100)
    assert all(len(line) <= 30 for line in lines[:short]) and all(len(line) > 30 for line in lines[short:])
    assert kept(fineweb.rule(FineWeb(max_newline_word_ratio=1)), "\n".join(lines)) is keep


@pytest.mark.parametrize(("extra", "keep"), [(0, True), (1, True), (-1, False)])
def test_fineweb_share_of_characters_in_duplicate_lines(extra, keep):
    duplicate = "the same line again."  # 20 characters, repeated once: 20 duplicate characters
    lines = _fineweb_lines(40, 40) + [duplicate, duplicate]
    body = sum(map(len, lines))
    lines[0] += "x" * (2000 - body + extra)  # 2,000 characters besides newlines: 0.01
    assert kept(fineweb.rule(FineWeb()), "\n".join(lines)) is keep


@pytest.mark.parametrize(("words_per_line", "keep"), [(9, True), (8, False)])
def test_fineweb_newlines_per_word(words_per_line, keep):
    lines = [" ".join(f"w{i}x{j}" for j in range(words_per_line)) + "." for i in range(31)]
    rule = fineweb.rule(FineWeb(max_newline_word_ratio=0.1, max_short_line_ratio=1))
    # the full stops count as words, as a word tokenizer splits them off: 30 newlines over 310 words
    # keeps, over 279 drops
    assert kept(rule, "\n".join(lines)) is keep


def _published_top(tokens, n):
    grams = [" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    if not grams:
        return 0
    gram, count = Counter(grams).most_common(1)[0]
    return len(gram) * count


def _published_duplicates(tokens, n):
    seen, chars, i = set(), 0, 0
    while i < len(tokens) - n + 1:
        gram = "".join(tokens[i : i + n])
        if gram in seen:
            chars += len(gram)
            i += n
        else:
            seen.add(gram)
            i += 1
    return chars


@pytest.mark.parametrize("seed", range(30))
def test_ngram_counts_match_the_published_definitions_on_repetitive_text(seed):
    rng = random.Random(seed)
    vocab = ["a", "bb", "ccc", "dddd", "the", "x"][: rng.randint(2, 6)]
    tokens = [rng.choice(vocab) for _ in range(rng.randint(0, 60))]
    grams = gopher.WordGrams(tokens)
    for n in range(1, 11):
        assert gopher.top_ngram_chars(grams, n) == _published_top(tokens, n)
        assert gopher.duplicate_ngram_chars(grams, n) == _published_duplicates(tokens, n)
