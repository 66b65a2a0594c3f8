"""The corpus pipeline's config, read by the same loader as training configs (megagpt.config)."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from typing import Optional

from data_pipeline.decontam import benchmark_texts
from data_pipeline.readers import input_kind
from megagpt.config import load_config
from megagpt.data import ngrams
from megagpt.data.tokenizer import SMALLEST_VOCAB
from megagpt.errors import ConfigError
from megagpt.slurm import check_log_dir, check_mem, check_name, check_partition, check_time


@dataclass
class InputConfig:
    paths: list[str] = field(default_factory=list)  # files or globs: .warc[.gz], .wet[.gz], .jsonl[.gz]
    source: str = "commoncrawl"


@dataclass
class OutputConfig:
    dir: str = "runs/corpus"
    # gzip level of documents/ and dropped/. 4: on English prose 5% larger than zlib's default 6
    # at 2.7x its speed (6 made compression the largest single cost of the finalize stage).
    gzip_level: int = 4


@dataclass
class UrlConfig:
    # domain lists (one a line, or hosts files): a page whose host is listed, or lies below a listed domain, is
    # dropped before extraction (data_pipeline/urls.py); empty: stage off
    blocklists: list[str] = field(default_factory=list)


@dataclass
class LangidConfig:
    # [] keeps every language (each document still labelled with lang and lang_score), as an empty list turns
    # url.blocklists and decontam.paths off: it dropped every document
    languages: list[str] = field(default_factory=lambda: ["en"])
    threshold: float = 0.65  # fastText lid.176 top-label probability needed to keep (with languages named)


@dataclass
class FiltersConfig:
    """FineWeb's heuristic rules with FineWeb's thresholds (data_pipeline/filters.py names the
    sources); each drop names the key it broke, and null turns a rule off."""

    enabled: bool = True  # false: no heuristic rule at all (sources filtered before, e.g. books)
    # Gopher repetition: shares of repeated paragraphs and lines (by count, by characters), the
    # characters of the most frequent n-gram, and of all repeated n-grams
    dup_para_frac: Optional[float] = 0.3
    dup_para_char_frac: Optional[float] = 0.2
    dup_line_frac: Optional[float] = 0.3
    dup_line_char_frac: Optional[float] = 0.2
    top_ngram_char_frac: Optional[dict] = field(default_factory=lambda: {2: 0.2, 3: 0.18, 4: 0.16})
    dup_ngram_char_frac: Optional[dict] = field(default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11,
                                                               10: 0.10})
    # Gopher quality (words are spaCy-like tokens, data_pipeline/text.py; punctuation-only ones are
    # left out of the word count and mean length)
    min_words: Optional[int] = 50
    max_words: Optional[int] = 100_000
    min_mean_word_length: Optional[float] = 3.0
    max_mean_word_length: Optional[float] = 10.0
    max_symbol_word_ratio: Optional[float] = 0.1  # '#', and '...' with '…', per word
    max_bullet_lines_ratio: Optional[float] = 0.9
    max_ellipsis_lines_ratio: Optional[float] = 0.3
    min_alpha_word_fraction: Optional[float] = 0.8
    min_stop_words: Optional[int] = 2
    stop_words: list[str] = field(default_factory=lambda: ["the", "be", "to", "of", "and", "that", "have", "with"])
    # C4: line rules remove the line, document rules (lorem ipsum, curly bracket, sentences) the page
    c4_terminal_punct: bool = False  # off in FineWeb: it removed too much
    c4_min_words_per_line: Optional[int] = 3
    c4_max_word_length: Optional[int] = 1000
    c4_remove_citations: bool = True
    c4_lorem_ipsum: bool = True
    c4_javascript: bool = True
    c4_curly_bracket: bool = True
    c4_policy: bool = True
    c4_min_sentences: Optional[int] = 5
    # FineWeb's own, on what the C4 rules left
    min_line_punct_ratio: Optional[float] = 0.12  # lines ending in a sentence terminal
    max_short_line_ratio: Optional[float] = 0.67
    short_line_length: int = 30
    max_dup_line_char_ratio: Optional[float] = 0.01
    max_newline_word_ratio: Optional[float] = 0.3


@dataclass
class QualityConfig:
    model: Optional[str] = None  # fastText classifier from `megagpt corpus train-quality`; absent: stage off
    mode: str = "pareto"  # "pareto": GPT-3's np.random.pareto(alpha) > 1 - score; "threshold": score >= threshold
    alpha: float = 9.0
    threshold: float = 0.5
    seed: int = 0


@dataclass
class PiiConfig:
    # FineWeb's PII formatting of the kept text (data_pipeline/pii.py): addresses replaced by reserved stand-ins
    emails: bool = False  # e-mail addresses -> email@example.com
    ips: bool = False  # public IPv4 -> 192.0.2.1, IPv6 in 2000::/3 -> 2001:db8::1 (private and loopback ones stay)


@dataclass
class DedupConfig:
    enabled: bool = True
    ngram: int = 5  # word n-grams (FineWeb)
    num_perm: int = 112
    bands: int = 14
    rows: int = 8
    # Candidates from the bands merge only if their signatures agree on this share of
    # hashes (an estimate of Jaccard similarity): keeps pairs below ~0.5 apart.
    verify_threshold: float = 0.7
    seed: int = 1


@dataclass
class DecontamConfig:
    paths: list[str] = field(default_factory=list)  # benchmark files (.jsonl[.gz], .txt); empty: stage off
    text_field: str = "text"  # the JSONL field(s) of an example's text (a,b: several); else known benchmark fields
    ngram: int = 13
    margin_chars: int = 200
    min_piece_chars: int = 200
    max_pieces: int = 10


@dataclass
class TokenizeConfig:
    # a tokenizer.json, or a directory with GPT-2's vocab.json + merges.txt; absent: train a
    # byte-level BPE on a sample of the kept text
    tokenizer: Optional[str] = None
    vocab_size: int = 32000
    # BPE trains on the kept documents whose seeded hash of their id is smallest, up to this many
    # UTF-8 bytes, so training costs the same however large the corpus grows
    train_sample_bytes: int = 300_000_000
    train_sample_seed: int = 0


@dataclass
class ExecutorConfig:
    kind: str = "local"  # "local": a process per worker here; "slurm": array jobs, reduce steps as dependent jobs
    workers: Optional[int] = None  # local: processes (default: all cores); slurm: array tasks at once (default: all)
    partition: Optional[str] = None  # slurm only
    time: Optional[str] = None  # slurm only: per-task limit, e.g. 02:00:00
    cpus_per_task: int = 1
    mem: Optional[str] = None  # slurm only: sbatch --mem per task, e.g. 8G (default: the cluster's)
    # slurm only: the reduce steps (dedup, tokenizer, summary), each one process over the whole corpus; the dedup
    # reduce holds the exact copies and the rows in verified pairs, a few dozen bytes each (default: time and mem)
    reduce_time: Optional[str] = None
    reduce_mem: Optional[str] = None
    # the dedup tasks' split: the exact copies and each band's pairs are found by this many tasks, each over
    # 1/dedup_parts of the corpus's hash keys or of one band's values (data_pipeline.dedup_tasks). Raise it when
    # those outgrow a task's memory (benchmarks/dedup_reduce.py); the results are the same for every value.
    # Locally at most dedup_parts of a stage's tasks run at once, so together they hold one band's share
    # whatever workers is: raising it also lets more cores work.
    dedup_parts: int = 1
    # slurm only: each dedup-exact and dedup-bands task. With one part a task holds about what the dedup reduce
    # does, so the default is reduce_time and reduce_mem (then time and mem); lower them as dedup_parts grows.
    dedup_time: Optional[str] = None
    dedup_mem: Optional[str] = None
    # slurm only: the most jobs the run may hold in the queue at once, each array task counted, as a QOS's or an
    # association's MaxSubmitJobs counts them (every stage is queued at once, behind the one before); the arrays
    # share it, each task then taking every k-th of its stage's tasks. Default: MaxArraySize alone bounds them.
    max_submit: Optional[int] = None
    wait: bool = True  # slurm: wait for the last job and check every stage finished
    # slurm: seconds between the squeue calls that wait for the jobs; each is an RPC to the cluster's controller,
    # which many sites ask scripts to make at most about once a minute
    poll_seconds: float = 30.0


MAX_POLL_SECONDS = 3600  # executor.poll_seconds: a wait that notices a finished run within the hour


@dataclass
class CorpusConfig:
    input: InputConfig = field(default_factory=InputConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    url: UrlConfig = field(default_factory=UrlConfig)
    langid: LangidConfig = field(default_factory=LangidConfig)
    filters: FiltersConfig = field(default_factory=FiltersConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    pii: PiiConfig = field(default_factory=PiiConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    decontam: DecontamConfig = field(default_factory=DecontamConfig)
    tokenize: TokenizeConfig = field(default_factory=TokenizeConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)




def load_corpus_config(path: Optional[str], overrides=(), check_inputs: bool = True) -> CorpusConfig:
    """check_inputs=False: a Slurm task's, whose run recorded its inputs when it started (every task of a stage
    globbing and stat-ing every input, 50k files, a thousand tasks at once, saturated a shared filesystem)."""
    cfg = load_config(path, overrides, root=CorpusConfig)
    validate_corpus(cfg, check_inputs)
    return cfg


def input_files(cfg: CorpusConfig) -> list[str]:
    """Every input file once, in a fixed order (so shard ids are stable across runs).

    A file that several patterns match (overlapping globs, a path given twice) is read once;
    a copy of a file under another name is read twice, and dedup keeps one of each document.
    """
    files, seen = [], set()
    for i, pattern in enumerate(cfg.input.paths):
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        folders = [m for m in matches if os.path.isdir(m)]
        if folders:
            raise ConfigError(f"input.paths[{i}]={pattern!r} {'is' if folders == [pattern] else 'matches'} the "
                              f"directory {folders[0]}: name files (e.g. {os.path.join(folders[0], '*.warc.gz')})")
        if not matches or not all(os.path.isfile(m) for m in matches):
            raise ConfigError(f"input.paths[{i}]={pattern!r} matches no file")
        for m in matches:
            input_kind(m)
            if os.path.realpath(m) not in seen:
                seen.add(os.path.realpath(m))
                files.append(m)
    return files


def _in_range(key: str, value, low, high=None) -> None:
    if not (low <= value and (high is None or value <= high)):
        raise ConfigError(f"{key}={value} must be at least {low}" if high is None else
                          f"{key}={value} must lie in [{low}, {high}]")


def _check_tokenizer(path: str) -> None:
    """Read the given tokenizer now, so a bad file fails the run before any stage, not hours in."""
    from megagpt.data.tokenizer import Tokenizer
    from megagpt.errors import DataError

    try:
        Tokenizer.load(path)
    except DataError as exc:
        raise ConfigError(f"tokenize.tokenizer={path!r}: {exc}") from None


def _validate_filters(f: FiltersConfig) -> None:
    fractions = ("dup_para_frac", "dup_para_char_frac", "dup_line_frac", "dup_line_char_frac", "max_symbol_word_ratio",
                 "max_bullet_lines_ratio", "max_ellipsis_lines_ratio", "min_alpha_word_fraction",
                 "min_line_punct_ratio", "max_short_line_ratio", "max_dup_line_char_ratio")
    for key in fractions:
        if getattr(f, key) is not None:
            _in_range(f"filters.{key}", getattr(f, key), 0.0, 1.0)
    for key in ("min_words", "max_words", "min_mean_word_length", "max_mean_word_length", "min_stop_words",
                "c4_min_words_per_line", "c4_max_word_length", "c4_min_sentences", "max_newline_word_ratio",
                "short_line_length"):
        if getattr(f, key) is not None:
            _in_range(f"filters.{key}", getattr(f, key), 0)
    if f.min_words is not None and f.max_words is not None and f.min_words > f.max_words:
        raise ConfigError(f"filters.min_words={f.min_words} exceeds filters.max_words={f.max_words}")
    for key in ("top_ngram_char_frac", "dup_ngram_char_frac"):
        for n, limit in (getattr(f, key) or {}).items():
            if not isinstance(n, int) or isinstance(n, bool) or n < 1 or isinstance(limit, bool) or \
                    not isinstance(limit, (int, float)) or not 0 <= limit <= 1:
                raise ConfigError(f"filters.{key} maps n-gram sizes (integers >= 1) to character fractions in "
                                  f"[0, 1]; got {n!r}: {limit!r}")
    if not all(isinstance(w, str) and w for w in f.stop_words):
        raise ConfigError(f"filters.stop_words={f.stop_words!r} must be a list of words")


def validate_corpus(cfg: CorpusConfig, check_inputs: bool = True) -> None:
    if not cfg.input.paths:
        raise ConfigError("input.paths=[] is empty")
    check_name("input.source", cfg.input.source)  # it names folders and files under output.dir
    _validate_filters(cfg.filters)
    for key in ("ngram", "num_perm", "bands", "rows"):
        _in_range(f"dedup.{key}", getattr(cfg.dedup, key), 1)
    _in_range("dedup.verify_threshold", cfg.dedup.verify_threshold, 0.0, 1.0)
    _in_range("tokenize.vocab_size", cfg.tokenize.vocab_size, SMALLEST_VOCAB)
    if not 1 <= cfg.output.gzip_level <= 9:
        raise ConfigError(f"output.gzip_level={cfg.output.gzip_level} must be between 1 and 9")
    e = cfg.executor
    if e.kind not in ("local", "slurm"):
        raise ConfigError(f"executor.kind={e.kind!r} must be 'local' or 'slurm'")
    if e.kind == "slurm":  # the stages' logs are output.dir/work/slurm/<stage>-%A_%a.out
        check_log_dir("output.dir", cfg.output.dir)
    if e.partition is not None:
        check_partition(e.partition, "executor.partition", ask_cluster=False)
    for key in ("time", "reduce_time", "dedup_time"):
        if getattr(e, key) is not None:
            check_time(f"executor.{key}", getattr(e, key))
    for key in ("mem", "reduce_mem", "dedup_mem"):
        if getattr(e, key) is not None:
            check_mem(f"executor.{key}", getattr(e, key))
    if e.cpus_per_task < 1:
        raise ConfigError(f"executor.cpus_per_task={e.cpus_per_task} must be at least 1")
    from data_pipeline.dedup import SLOTS

    _in_range("executor.dedup_parts", e.dedup_parts, 1, SLOTS)
    if not 0 < e.poll_seconds <= MAX_POLL_SECONDS:
        raise ConfigError(f"executor.poll_seconds={e.poll_seconds} must be more than 0 and at most {MAX_POLL_SECONDS}")
    if e.max_submit is not None and e.max_submit < 1:
        raise ConfigError(f"executor.max_submit={e.max_submit} must be at least 1")
    if cfg.executor.workers is not None and cfg.executor.workers < 1:
        raise ConfigError(f"executor.workers={cfg.executor.workers} must be at least 1")
    d = cfg.dedup
    if d.bands * d.rows > d.num_perm:
        raise ConfigError(f"dedup.bands*dedup.rows={d.bands}*{d.rows} exceeds dedup.num_perm={d.num_perm}")
    if not 0.0 <= cfg.langid.threshold <= 1.0:
        raise ConfigError(f"langid.threshold={cfg.langid.threshold} must lie in [0, 1]")
    if cfg.langid.languages:
        from data_pipeline.langid import known_languages

        unknown = [code for code in cfg.langid.languages if code not in known_languages()]
        if unknown:  # a code the model never gives would drop every document
            raise ConfigError(f"langid.languages: {unknown[0]!r} is not a code lid.176 labels texts with "
                              f"(ISO 639 codes such as en, de, zh)")
    for i, path in enumerate(cfg.url.blocklists):
        if not os.path.isfile(path):
            raise ConfigError(f"url.blocklists[{i}]={path!r}: file not found")
    if cfg.url.blocklists and check_inputs:  # the driver's load: a bad line stops the run before it starts
        from data_pipeline.urls import blocklist

        blocklist(tuple(cfg.url.blocklists))
    for i, path in enumerate(cfg.decontam.paths):
        if not os.path.isfile(path):
            raise ConfigError(f"decontam.paths[{i}]={path!r}: file not found")
        if not any(len(ngrams.words(text)) >= cfg.decontam.ngram for text in benchmark_texts(path, cfg.decontam.text_field)):
            raise ConfigError(f"decontam.paths[{i}]={path!r} yields no {cfg.decontam.ngram}-grams "
                              f"(decontam.text_field={cfg.decontam.text_field!r}): it would remove nothing")
    q = cfg.quality
    if q.mode not in ("pareto", "threshold"):
        raise ConfigError(f"quality.mode={q.mode!r} must be 'pareto' or 'threshold'")
    if q.model is not None and not os.path.isfile(q.model):
        raise ConfigError(f"quality.model={q.model!r}: file not found")
    if q.model is not None:
        from data_pipeline.quality import check_model

        check_model(q.model)  # a file that is no classifier of ours drops every document, hours in
    if q.alpha <= 0:
        raise ConfigError(f"quality.alpha={q.alpha} must be positive")
    _in_range("quality.threshold", q.threshold, 0.0, 1.0)
    _in_range("tokenize.train_sample_bytes", cfg.tokenize.train_sample_bytes, 1)
    if cfg.tokenize.tokenizer is not None:
        _check_tokenizer(cfg.tokenize.tokenizer)
    if check_inputs:
        input_files(cfg)
