"""Our vectorised MinHash gives datasketch's values exactly."""

import numpy as np
from datasketch import MinHash

from data_pipeline.config import DedupConfig
from data_pipeline.dedup import normalize, shingle_hashes, signature


def test_signature_equals_datasketch_update_batch():
    cfg = DedupConfig()
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(300)]
    texts = ["", "one", "a b c d", *(" ".join(rng.choice(words, size=n)) for n in (5, 6, 50, 400))]
    for text in texts:
        reference = MinHash(num_perm=cfg.num_perm, seed=cfg.seed, hashfunc=int, scheme="affine32")
        reference.update_batch(shingle_hashes(normalize(text), cfg.ngram).tolist())
        ours = signature(text, cfg)
        assert reference.hashvalues.max() < 2 ** 32 and ours.dtype == np.uint32  # 4 bytes a value hold them all
        assert np.array_equal(ours, reference.hashvalues), text


def test_ascii_fast_path_normalizes_like_the_regex():
    from data_pipeline.dedup import _PUNCT

    every_ascii = "".join(chr(i) for i in range(128)) * 2 + " Hello, World! snake_case x-y 3.14 (a) [b]\t\x1cend"
    for text in (every_ascii, every_ascii + "é", "Ünïcode — words", ""):
        assert normalize(text) == _PUNCT.sub(" ", text.lower()).split()
