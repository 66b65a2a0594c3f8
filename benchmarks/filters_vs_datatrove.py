"""The heuristic filters against datatrove's, as FineWeb chains them, on the same generated pages.

    python benchmarks/filters_vs_datatrove.py [--pages 3000] [--peer-python .venv-peers/bin/python]
                                              [--record tests/data/datatrove_filter_decisions.json]

Pages: data_pipeline.page_kinds (prose, lists, code, keyword spam, boilerplate, and pages mixing
them). datatrove runs in its own venv (benchmarks/datatrove_filters.py). Prints, per kind, how
often the two agree on keep/drop and what each keeps, then each filter's time per page on one
core; without that venv, megagpt's side alone. --record writes datatrove's decisions for
tests/unit/test_filters.py, which checks the agreement without datatrove installed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from data_pipeline import filters  # noqa: E402
from data_pipeline.config import FiltersConfig  # noqa: E402
from data_pipeline.page_kinds import KINDS, labelled_pages  # noqa: E402


def ours(texts: list[str], cfg: FiltersConfig) -> tuple[list, Counter]:
    """Each page's rule (or None) and seconds per filter (and for splitting pages into words)."""
    seconds = Counter()
    return [filters.apply_filters(text, cfg, seconds)[1] for text in texts], seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peer-python", default=os.path.join(REPO, ".venv-peers", "bin", "python"))
    parser.add_argument("--record", help="write datatrove's decisions here (JSON)")
    args = parser.parse_args()
    if args.pages < len(KINDS):
        parser.error(f"--pages {args.pages}: at least {len(KINDS)}, a page of each kind")
    pages = labelled_pages(args.pages, args.seed)
    texts = [text for _, text in pages]
    if args.record and not os.path.exists(args.peer_python):
        parser.error(f"--record needs datatrove: no {args.peer_python} (see benchmarks/requirements-peers.txt)")
    peer = None
    if os.path.exists(args.peer_python):
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(texts, f)
        peer = json.loads(subprocess.run([args.peer_python, os.path.join(REPO, "benchmarks", "datatrove_filters.py"),
                                          f.name], check=True, capture_output=True, text=True).stdout)
        os.remove(f.name)
    mine, seconds = ours(texts, FiltersConfig())
    theirs = peer["decisions"] if peer else [None] * len(texts)  # not used without datatrove: its cells say "-"

    print(f"{args.pages} pages (seed {args.seed}); keep/drop agreement and share kept")
    print(f"{'kind':<13}{'pages':>7}{'agree':>9}{'kept (ours)':>13}{'kept (datatrove)':>18}")
    for kind in KINDS + ("all",):
        rows = [(m, d) for (k, _), m, d in zip(pages, mine, theirs) if kind in (k, "all")]
        agree = sum((m is None) == (d is None) for m, d in rows) / len(rows)
        kept_ours, kept_dt = (sum(x is None for x in column) / len(rows) for column in zip(*rows))
        print(f"{kind:<13}{len(rows):>7}" + (f"{agree:>9.2%}" if peer else f"{'-':>9}") + f"{kept_ours:>13.1%}"
              + (f"{kept_dt:>18.1%}" if peer else f"{'-':>18}"))
    print(f"\n{'filter':<20}{'ours ms/page':>14}{'datatrove ms/page':>19}")
    print(f"{'words (ours, once)':<20}{1000 * seconds['words'] / len(texts):>14.3f}{'(in each filter)':>19}")
    for name in ("gopher_repetition", "gopher_quality", "c4", "fineweb"):
        print(f"{name:<20}{1000 * seconds[name] / len(texts):>14.3f}"
              + (f"{1000 * peer['seconds'][name] / len(texts):>19.3f}" if peer else f"{'-':>19}"))
    total_ours = sum(seconds.values())
    if peer:
        total_dt = sum(peer["seconds"].values())
        print(f"{'all':<20}{1000 * total_ours / len(texts):>14.3f}{1000 * total_dt / len(texts):>19.3f}"
              f"   ({total_dt / total_ours:.1f}x)")
    else:
        print(f"{'all':<20}{1000 * total_ours / len(texts):>14.3f}{'-':>19}")
        print(f"datatrove not run (install benchmarks/requirements-peers.txt into {args.peer_python})")
    if args.record:
        with open(args.record, "w") as out:
            json.dump({"pages": args.pages, "seed": args.seed, "decisions": peer["decisions"]}, out)
            out.write("\n")


if __name__ == "__main__":
    main()
