"""Labelled web-like pages for judging the heuristic filters: prose, lists, code, keyword spam and
boilerplate, each drawn with wide random parameters so that some land near every threshold.

Self-contained (its own vocabulary, no stdlib docstrings): the same seed gives the same pages on
every Python, so decisions recorded once (tests/data/datatrove_filter_decisions.json, by
benchmarks/filters_vs_datatrove.py) stay comparable.
"""

from __future__ import annotations

import random

KINDS = ("prose", "list", "code", "spam", "boilerplate", "mixed")

_NOUNS = ("system model river city council report market teacher history method network garden season "
          "library engine harbor village committee record answer museum bridge storm mountain policy "
          "company student doctor family language festival harvest journey machine signal theory window "
          "forest island letter picture planet question school station table valley voice winter "
          "program result process project surface weather").split()
_VERBS = ("describes changes builds follows carries measures opens reaches shapes supports explains "
          "protects reveals records improves crosses visits enters joins leaves keeps returns produces "
          "connects covers").split()
_ADJECTIVES = ("small large early recent northern quiet careful simple local public ancient modern "
               "bright narrow steady common rare strong formal useful central").split()
_ADVERBS = "slowly often rarely carefully quickly quietly usually finally clearly".split()
_LINKS = ("because although while after before since unless when").split()
_SPAM_WORDS = ("cheap casino bonus buy now best price free spins discount viagra replica watches "
               "online slots jackpot poker deal sale offer win cash loans outlet shop order today "
               "lowest guaranteed bet promo code sneakers handbags").split()
_MENU = ("Home About Contact Blog News Shop Careers Support Login Register Search Help Privacy "
         "Terms Sitemap FAQ Pricing Products Services Events Team Press Partners").split()
_BOILER = ("All rights reserved.", "This site uses cookies to improve your experience.",
           "Accept all cookies", "Read our privacy policy and terms of use.", "Subscribe to our newsletter",
           "Follow us on social media", "Skip to main content", "Powered by WordPress",
           "Please enable JavaScript to view this page.", "Share this article", "Back to top",
           "Sign up for updates", "Lorem ipsum dolor sit amet, consectetur adipiscing elit.")


def _sentence(rng: random.Random) -> str:
    def phrase():
        return f"the {rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}" if rng.random() < 0.6 else \
            f"a {rng.choice(_NOUNS)} of the {rng.choice(_NOUNS)}"

    words = f"{phrase()} {rng.choice(_ADVERBS) + ' ' if rng.random() < 0.3 else ''}{rng.choice(_VERBS)} {phrase()}"
    if rng.random() < 0.5:
        words += f" {rng.choice(_LINKS)} {phrase()} {rng.choice(_VERBS)} {phrase()}"
    if rng.random() < 0.3:
        words += f", and it {rng.choice(_VERBS)} {phrase()} with care"
    return words[0].upper() + words[1:] + rng.choice(".....!?")


def prose(rng: random.Random) -> str:
    paragraphs = [" ".join(_sentence(rng) for _ in range(rng.randint(3, 7))) for _ in range(rng.randint(2, 7))]
    return "\n\n".join(paragraphs)


def listing(rng: random.Random) -> str:
    bullet = rng.choice(["- ", "• ", "* ", "", "1. "])
    items = [f"{bullet}{rng.choice(_ADJECTIVES).capitalize()} {rng.choice(_NOUNS)}"
             + (f" {rng.choice(_VERBS)} the {rng.choice(_NOUNS)}" if rng.random() < 0.5 else "")
             + ("." if rng.random() < 0.3 else "") for _ in range(rng.randint(5, 60))]
    head = [prose(rng)] if rng.random() < 0.5 else [f"{rng.choice(_ADJECTIVES).capitalize()} {rng.choice(_NOUNS)}s"]
    return "\n".join(head + items)


def code(rng: random.Random) -> str:
    lines = []
    for f in range(rng.randint(2, 8)):
        name = f"{rng.choice(_VERBS)[:-1]}_{rng.choice(_NOUNS)}"
        args = ", ".join(rng.sample(_NOUNS, rng.randint(1, 3)))
        if rng.random() < 0.5:
            lines += [f"def {name}({args}):", f'    """{_sentence(rng)}"""']
            lines += [f"    {rng.choice(_NOUNS)} = {rng.choice(_NOUNS)} + {rng.randint(1, 99)}"
                      for _ in range(rng.randint(1, 6))]
            lines += [f"    return {rng.choice(_NOUNS)}", ""]
        else:
            lines += [f"function {name}({args}) {{", f"  // {_sentence(rng)}"]
            lines += [f"  let {rng.choice(_NOUNS)} = {rng.choice(_NOUNS)} * {rng.randint(1, 99)};"
                      for _ in range(rng.randint(1, 6))]
            lines += [f"  return {rng.choice(_NOUNS)};", "}", ""]
    return "\n".join(lines)


def spam(rng: random.Random) -> str:
    keywords = rng.sample(_SPAM_WORDS, rng.randint(3, 8))
    style = rng.randrange(4)
    if style == 0:  # the same keyword line over and over
        line = " ".join(rng.choice(keywords) for _ in range(rng.randint(4, 12)))
        return "\n".join([line] * rng.randint(10, 60))
    if style == 1:  # keyword soup
        return " ".join(rng.choice(keywords) for _ in range(rng.randint(60, 400)))
    if style == 2:  # stuffed sentences around a few keywords
        return " ".join(f"{' '.join(rng.sample(keywords, 3)).capitalize()} {rng.choice(['now', 'online', 'today'])}."
                        for _ in range(rng.randint(20, 80)))
    tags = rng.choice([" | ", ", ", " ### ", " - "])
    return "\n".join(tags.join(rng.choice(keywords) for _ in range(rng.randint(3, 10)))
                     for _ in range(rng.randint(10, 50)))


def boilerplate(rng: random.Random) -> str:
    parts = [" | ".join(rng.sample(_MENU, rng.randint(4, 10)))]
    parts += rng.sample(_BOILER, rng.randint(3, 8))
    if rng.random() < 0.5:
        parts.insert(rng.randrange(len(parts)), prose(rng))
    parts.append(f"Copyright {rng.randint(1999, 2025)} {rng.choice(_NOUNS).capitalize()} Inc.")
    return "\n".join(parts)


def mixed(rng: random.Random) -> str:
    """Parts of the other kinds in one page, as real pages mix them: the near-threshold cases."""
    parts = rng.choices([prose, listing, code, spam, boilerplate], weights=[4, 2, 1, 1, 2], k=rng.randint(2, 4))
    return "\n\n".join(make(rng) for make in parts)


MAKERS = {"prose": prose, "list": listing, "code": code, "spam": spam, "boilerplate": boilerplate, "mixed": mixed}


def labelled_pages(count: int, seed: int = 0) -> list[tuple[str, str]]:
    """(kind, text) pairs, the kinds in turn."""
    rng = random.Random(seed)
    return [(kind, MAKERS[kind](rng)) for kind in (KINDS[i % len(KINDS)] for i in range(count))]
