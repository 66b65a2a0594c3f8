import pytest

from data_pipeline.config import load_corpus_config
from data_pipeline.synthetic import write_crawl


def corpus_config(crawl_dir, out_dir, *overrides):
    return load_corpus_config(None, [f"input.paths=[{crawl_dir}/*.warc.gz]", f"output.dir={out_dir}",
                                     "langid.threshold=0.5", "tokenize.vocab_size=2000", "executor.workers=2",
                                     *overrides])


@pytest.fixture(scope="session")
def crawl(tmp_path_factory):
    path = tmp_path_factory.mktemp("crawl")
    return path, write_crawl(str(path), files=4, pages=200, seed=0)


@pytest.fixture(scope="session")
def corpus_run(crawl, tmp_path_factory):
    """One uninterrupted pipeline run over the planted crawl: (output dir, truth, summary)."""
    from data_pipeline.pipeline import run

    crawl_dir, truth = crawl
    out = tmp_path_factory.mktemp("corpus")
    summary = run(corpus_config(crawl_dir, out), progress=False)
    return out, truth, summary
