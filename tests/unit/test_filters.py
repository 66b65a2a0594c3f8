"""The heuristic filters: each rule on a page planted to break it alone, the C4 line cleaning, the
spaCy-like tokens they count, and agreement with datatrove's decisions recorded on generated pages."""

import collections
import dataclasses
import json
import os
import random

import pytest

from data_pipeline import filters
from data_pipeline.config import FiltersConfig, load_corpus_config
from data_pipeline.page_kinds import labelled_pages, prose
from data_pipeline.text import ends_sentence, sentence_count, words
from megagpt.errors import ConfigError

RECORDED = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "datatrove_filter_decisions.json")


def only(**rules) -> FiltersConfig:
    """Every rule off but the given ones."""
    off = {}
    for f in dataclasses.fields(FiltersConfig):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if f.name in ("enabled", "stop_words", "short_line_length"):  # switches and parameters, not rules
            off[f.name] = default
        else:
            off[f.name] = {} if isinstance(default, dict) else False if isinstance(default, bool) else None
    defaults = FiltersConfig()
    return FiltersConfig(**{**off, **{k: getattr(defaults, k) if v is True and not isinstance(getattr(defaults, k), bool)
                                      else v for k, v in rules.items()}})


def page(seed: int = 0) -> str:
    return prose(random.Random(seed))


def reason(text: str, cfg: FiltersConfig = None) -> str | None:
    return filters.apply_filters(text, cfg or FiltersConfig())[1]


def test_clean_prose_passes_every_default_rule():
    for seed in range(20):
        text = page(seed)
        # C4's line rules take out the blank lines between paragraphs (as FineWeb's text shows)
        assert filters.apply_filters(text, FiltersConfig()) == (text.replace("\n\n", "\n"), None)


PARAGRAPHS = [page(s).replace("\n", " ") for s in range(1, 5)]  # one line each
LINES = [line for p in PARAGRAPHS for line in p.split(". ")]


@pytest.mark.parametrize("rule,broken,fine", [
    ("dup_para_frac", [PARAGRAPHS[0]] * 2 + PARAGRAPHS[1:2], PARAGRAPHS[:3]),
    ("dup_para_char_frac", [PARAGRAPHS[0] * 3] * 2 + PARAGRAPHS[1:], [PARAGRAPHS[0] * 3] + PARAGRAPHS[1:]),
])
def test_repeated_paragraphs(rule, broken, fine):
    cfg = only(**{rule: True})
    assert reason("\n\n".join(broken), cfg) == rule
    assert reason("\n\n".join(fine), cfg) is None


@pytest.mark.parametrize("rule,broken,fine", [
    ("dup_line_frac", LINES[:6] + LINES[:4], LINES[:10]),
    ("dup_line_char_frac", [LINES[0] * 9] * 2 + LINES[1:10], [LINES[0] * 9] + LINES[1:10]),
])
def test_repeated_lines(rule, broken, fine):
    cfg = only(**{rule: True})
    assert reason("\n".join(broken), cfg) == rule
    assert reason("\n".join(fine), cfg) is None


def planted(phrase_words: int, times: int, seed: int = 0) -> str:
    """Clean prose with one phrase of that many words put in `times` times, each between fresh words."""
    rng = random.Random(seed)
    phrase = " ".join(f"grand{'abcdefghij'[i]}word" for i in range(phrase_words))
    base = page(seed).split(" ")
    for _ in range(times):
        base.insert(rng.randrange(len(base)), f"{phrase} z{rng.randrange(10**9)}")
    return " ".join(base)


@pytest.mark.parametrize("n", [2, 3, 4])
def test_the_most_frequent_ngram(n):
    rule = f"top_ngram_char_frac[{n}]"
    cfg = only(top_ngram_char_frac={n: FiltersConfig().top_ngram_char_frac[n]})
    fired = next(k for k in range(1, 400) if reason(planted(n, k), cfg))
    assert reason(planted(n, fired), cfg) == rule and reason(planted(n, fired - 1), cfg) is None
    # with every default rule on, the planted phrase still breaks this rule before any other
    assert reason(planted(n, next(k for k in range(1, 400) if reason(planted(n, k))))) == rule


@pytest.mark.parametrize("n", [5, 6, 7, 8, 9, 10])
def test_repeated_ngrams(n):
    rule = f"dup_ngram_char_frac[{n}]"
    cfg = only(dup_ngram_char_frac={n: FiltersConfig().dup_ngram_char_frac[n]})
    fired = next(k for k in range(1, 400) if reason(planted(n, k), cfg))
    assert fired > 1 and reason(planted(n, fired), cfg) == rule and reason(planted(n, fired - 1), cfg) is None
    assert reason(planted(n, next(k for k in range(1, 400) if reason(planted(n, k))))) == rule


def _walk(tokens: list[str], n: int) -> int:
    """Gopher's repeated n-gram characters as datatrove walks them, on joined strings."""
    grams = [" ".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    seen, total, i = set(), 0, 0
    while i < len(grams):
        if grams[i] in seen:
            total, i = total + len(grams[i].replace(" ", "")), i + n
        else:
            seen.add(grams[i])
            i += 1
    return total


def test_duplicated_ngrams_equal_the_plain_walk_on_random_pages():
    rng = random.Random(0)
    for _ in range(1500):
        vocab = ["w" * rng.randint(1, 4) + str(k) for k in range(rng.randint(1, 6))]
        tokens = [rng.choice(vocab) for _ in range(rng.randint(0, 60))]
        for n in range(1, 8):
            assert filters._duplicated_ngram_chars(filters._NGrams(tokens), n) == _walk(tokens, n), (tokens, n)


def test_a_page_tokenizes_as_its_lines_do():
    """apply_filters splits each line once; the page's tokens must be its lines' tokens in order."""
    for _, text in labelled_pages(300, seed=3):
        text += "\nSee Dr.\nand Mr.\r\nU.S.\u2028it's [1] done..."
        assert words(text) == [t for line in text.splitlines() for t in words(line)]


def test_each_filter_reports_its_time():
    seconds = collections.Counter()
    filters.apply_filters(page(1), FiltersConfig(), seconds)
    assert set(seconds) == {"words", "gopher_repetition", "gopher_quality", "c4", "fineweb"}
    assert all(v > 0 for v in seconds.values())


def test_duplicated_ngrams_count_each_repeat_once():
    tokens = "a b c d e a b c d e a b c d e".split()
    assert filters._duplicated_ngram_chars(filters._NGrams(tokens), 5) == 2 * len("abcde")
    # 2-grams: ab bc cd de ea are new; then ab, cd, ea, bc, de repeat, each match skipping two tokens
    assert filters._duplicated_ngram_chars(filters._NGrams(tokens), 2) == 5 * 2


@pytest.mark.parametrize("rule,value,text", [
    ("min_words", True, "Too short to be a page of the web."),
    ("max_words", 40, page(3)),
    ("min_mean_word_length", True, " ".join(["a be to of it is an at by we"] * 8)),
    ("max_mean_word_length", True, " ".join(f"extraordinarily{i} characteristically" for i in range(40))),
    ("max_symbol_word_ratio (#)", True, " ".join(f"#tag{i} and the word" for i in range(30))),
    ("max_symbol_word_ratio (...)", True, " ".join(f"and then{i}... the" for i in range(30))),
    ("max_bullet_lines_ratio", True, "\n".join(f"- item {i} of the list" for i in range(30))),
    ("max_ellipsis_lines_ratio", True, "\n".join(f"The line {i} trails off and" + "..." * (i % 2) for i in range(30))),
    ("min_alpha_word_fraction", True, " ".join(f"{i} {i * 7} the {i + 3}" for i in range(30))),
    ("min_stop_words", True, " ".join(f"Cats{i} chase mice" for i in range(30))),
])
def test_gopher_quality_rules(rule, value, text):
    key = rule.split(" ")[0]
    assert reason(text, only(**{key: value})) == rule
    assert reason(page(3), only(**{key: value})) is None or key == "max_words"


def test_c4_removes_lines_and_drops_pages():
    good = [f"The {w} line of the page has words enough and ends well." for w in ("first", "second", "third")]
    lines = ["Menu", "Please enable JavaScript to view this site properly today.", good[0],
             "We use cookies: read our Privacy Policy for the details here.", good[1],
             "x" * 1001 + " is a very long word in this line.", good[2] + " [1][edit]"]
    text, why = filters.c4("\n".join(lines), only(c4_min_words_per_line=3, c4_max_word_length=1000,
                                                     c4_remove_citations=True, c4_javascript=True, c4_policy=True))
    assert why is None and text == "\n".join(good)
    assert filters.c4(text + "\nSome lorem ipsum text.", only(c4_lorem_ipsum=True))[1] == "c4_lorem_ipsum"
    assert filters.c4(text + "\nA dict {a: 1} here.", only(c4_curly_bracket=True))[1] == "c4_curly_bracket"
    assert filters.c4(text, only(c4_min_sentences=3))[1] is None
    assert filters.c4(text, only(c4_min_sentences=4))[1] == "c4_min_sentences"
    ended, _ = filters.c4("Ends well.\nDoes not end\nEnds with an ellipsis...", only(c4_terminal_punct=True))
    assert ended == "Ends well."


def test_c4_cleaning_reaches_the_fineweb_rules_and_the_output():
    body = page(5)
    text, why = filters.apply_filters(body + "\nClick here for javascript games and more fun.", FiltersConfig())
    assert why is None and "javascript" not in text and text.startswith(body.split("\n")[0].strip())


@pytest.mark.parametrize("rule,text", [
    ("min_line_punct_ratio", "\n".join(f"A line {i} without an end mark at all" for i in range(20))),
    ("max_short_line_ratio", "\n".join(f"Short {i}." for i in range(20)) + "\n" + page(1)),
    ("max_dup_line_char_ratio", page(1) + "\nThe same line appears twice here.\nThe same line appears twice here."),
    ("max_newline_word_ratio", "\n".join(f"Word{i}." for i in range(20))),
])
def test_fineweb_rules(rule, text):
    cfg = only(**{rule: True})
    assert filters.fineweb(text, cfg) == rule
    assert filters.fineweb(page(1), cfg) is None


def test_words_are_spacy_like_tokens():
    # spaCy 3 (en, as datatrove loads it) on the same text gives these tokens
    text = ("Don't worry -- it's the well-known U.S. case, e.g. $10.50 or 1,000 items (roughly 10%)... \"Quoted\" "
            "text! What?! #hashtag @user http://example.com/a?b=1 w123456 foo_bar x=y+1; {a: b} [1] e-mail 3-4 "
            "Mr. Smith etc. \u2026 end.")
    assert words(text) == [
        "Do", "n't", "worry", "--", "it", "'s", "the", "well", "-", "known", "U.S.", "case", ",", "e.g.", "$", "10.50",
        "or", "1,000", "items", "(", "roughly", "10", "%", ")", "...", '"', "Quoted", '"', "text", "!", "What", "?",
        "!", "#", "hashtag", "@user", "http://example.com/a?b=1", "w123456", "foo_bar", "x", "=", "y+1", ";", "{",
        "a", ":", "b", "}", "[", "1", "]", "e", "-", "mail", "3", "-", "4", "Mr.", "Smith", "etc", ".", "\u2026",
        "end", "."]


@pytest.mark.parametrize("text,count", [  # spaCy's sentencizer's counts for the same texts
    ("Hello world. This is Mr. Smith, e.g. a test! Is it?! Yes... and more", 4),
    ('"Quote." Next one here. (Parenthetical.) Then text', 4),
    ("No end here", 1), ("One. Two. Three. Four. Five.", 5), ("", 0),
])
def test_sentences_as_spacy_counts_them(text, count):
    assert sentence_count(text) == count


def test_line_ends_on_unicode_sentence_terminals():
    assert all(ends_sentence(s) for s in ("Done.", "Really?", "Yes!", "\u3002\u3002", "\u0964"))
    assert not any(ends_sentence(s) for s in ("comma,", "colon:", "", "quote\""))


def test_same_decisions_as_datatrove_on_generated_pages():
    """Recorded by benchmarks/filters_vs_datatrove.py --record (datatrove 0.10.1, FineWeb's chain)."""
    with open(RECORDED) as f:
        recorded = json.load(f)
    pages = labelled_pages(recorded["pages"], recorded["seed"])
    assert len(pages) >= 2000
    ours = [reason(text) for _, text in pages]
    agree = sum((a is None) == (b is None) for a, b in zip(ours, recorded["decisions"])) / len(pages)
    assert agree >= 0.99
    by_kind = {kind: [r for (k, _), r in zip(pages, ours) if k == kind] for kind in ("prose", "spam")}
    assert sum(r is None for r in by_kind["prose"]) / len(by_kind["prose"]) >= 0.95
    assert sum(r is not None for r in by_kind["spam"]) / len(by_kind["spam"]) >= 0.95


@pytest.mark.parametrize("override,message", [
    ("filters.dup_line_frac=1.5", "filters.dup_line_frac=1.5 must lie in [0.0, 1.0]"),
    ("filters.top_ngram_char_frac={0: 0.2}", "filters.top_ngram_char_frac maps n-gram sizes"),
    ("filters.dup_ngram_char_frac={5: 2}", "filters.dup_ngram_char_frac maps n-gram sizes"),
    ("filters.min_words=-1", "filters.min_words=-1 must be at least 0"),
    ("filters.stop_words=[{a: 1}]", "filters.stop_words[0]={'a': 1} is not a valid str"),
    ("filters.c4_min_sentences=-2", "filters.c4_min_sentences=-2 must be at least 0"),
])
def test_bad_filter_settings_are_one_line_errors(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace("+", r"\+")):
        load_corpus_config(None, ["input.paths=[README.md]", override])


def test_filters_enabled_false_keeps_everything():
    spam = "\n".join(["buy cheap pills now best price"] * 30)
    assert reason(spam, dataclasses.replace(FiltersConfig(), enabled=False)) is None


def test_a_rule_set_to_null_is_off():
    spam = "\n".join(["buy cheap pills now best price"] * 30)
    assert reason(spam) == "dup_para_frac" or reason(spam) == "dup_line_frac"
    cfg = dataclasses.replace(FiltersConfig(), dup_line_frac=None, dup_line_char_frac=None)
    assert reason(spam, cfg) not in ("dup_line_frac", "dup_line_char_frac")


def test_an_ngram_rule_set_to_null_is_off_and_names_its_key_when_on():
    """`filters.top_ngram_char_frac=null` was 'None is not a valid dict', though null turns every other rule off;
    its drops were named top_4gram_char_frac, a key that does not exist."""
    text = planted(4, 200)
    assert reason(text, only(top_ngram_char_frac={4: 0.16})) == "top_ngram_char_frac[4]"
    cfg = load_corpus_config(None, ["input.paths=[README.md]", "filters.top_ngram_char_frac=null",
                                    "filters.dup_ngram_char_frac=null"], check_inputs=False).filters
    assert (cfg.top_ngram_char_frac, cfg.dup_ngram_char_frac) == (None, None)
    assert reason(text, dataclasses.replace(only(), top_ngram_char_frac=None, dup_ngram_char_frac=None)) is None


def test_a_page_whose_every_line_the_c4_rules_remove_says_so():
    cfg = only(c4_min_words_per_line=3)
    assert reason("one two\nthree four\nfive", cfg) == "c4 line rules removed every line"
