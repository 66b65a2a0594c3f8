"""The peer side of benchmarks/filters_vs_datatrove.py: datatrove's filters as FineWeb chains them.

Runs in its own environment (see benchmarks/requirements-peers.txt):
    python benchmarks/datatrove_filters.py PAGES_JSON
PAGES_JSON holds a list of texts. Prints one JSON object: per page the name of the filter that
dropped it and its reason (or null), and the seconds each filter took.
"""

import json
import sys
import time


def main() -> None:
    from datatrove.data import Document
    from datatrove.pipeline.filters import (C4QualityFilter, FineWebQualityFilter, GopherQualityFilter,
                                            GopherRepetitionFilter)

    with open(sys.argv[1]) as f:
        texts = json.load(f)
    # FineWeb's chain (datatrove's examples/fineweb.py): the C4 filter without its terminal-punctuation rule
    chain = [("gopher_repetition", GopherRepetitionFilter()), ("gopher_quality", GopherQualityFilter()),
             ("c4", C4QualityFilter(filter_no_terminal_punct=False)), ("fineweb", FineWebQualityFilter())]
    for _, f in chain:  # the first call loads spaCy's tokenizer: not a per-page cost
        f.filter(Document(text="Warm up the tokenizer with the first call of each filter.", id="warm"))
    seconds = {name: 0.0 for name, _ in chain}
    decisions = []
    for i, text in enumerate(texts):
        doc, verdict = Document(text=text, id=str(i)), None
        for name, f in chain:
            start = time.perf_counter()
            result = f.filter(doc)  # C4QualityFilter rewrites doc.text, as in FineWeb
            seconds[name] += time.perf_counter() - start
            keep, reason = (result, None) if isinstance(result, bool) else result
            if not keep:
                verdict = [name, reason]
                break
        decisions.append(verdict)
    print(json.dumps({"decisions": decisions, "seconds": seconds}))


if __name__ == "__main__":
    main()
