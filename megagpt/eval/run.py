"""One rank of `megagpt eval`: the checkpoint opened on this TP rank, the evaluation run, rank 0's report."""

from __future__ import annotations

import collections
import json
import os

from megagpt.errors import ConfigError


def check_eval_args(args) -> None:
    """Everything that can be checked before processes start: flags (counts: launchers.cli.COUNTS), and the task
    file with its records."""
    if args.tokenizer:
        from megagpt.data.tokenizer import check_tokenizer_flag

        check_tokenizer_flag(args.tokenizer)
    if args.output:  # written at the end: a path that cannot be lost the whole evaluation's result
        folder = os.path.dirname(os.path.abspath(args.output))
        if os.path.isdir(args.output):
            raise ConfigError(f"--output {args.output} is a directory; name the file to write")
        if not os.path.isdir(folder):
            raise ConfigError(f"--output {args.output}: no directory {folder} to write it in")
    if args.eval_command == "icl":
        from megagpt.eval.tasks import load_task

        if args.shots < 0:
            raise ConfigError(f"--shots {args.shots} must be >= 0")
        task = load_task(args.task)
        from megagpt.data.shards import check_source

        for path in args.corpus or []:
            check_source(path, "--corpus")
        # a record is never its own shot (icl.shots_for), so a test record that train holds too has fewer to draw from
        key = lambda r: json.dumps(r, sort_keys=True)  # noqa: E731
        in_train = collections.Counter(map(key, task.train))
        available = len(task.train) - max((in_train[key(r)] for r in task.test[:args.limit]), default=0)
        if args.shots > available:
            raise ConfigError(f"--shots {args.shots}: {args.task} has {available} train records to draw from"
                              + (f" (of {len(task.train)}, leaving out copies of the test record)"
                                 if available < len(task.train) else ""))
    else:
        from megagpt.data.shards import check_source

        if args.stride is not None and args.stride < 1:
            raise ConfigError(f"--stride {args.stride} must be at least 1")
        for path in args.data:  # before the ranks start and load the checkpoint
            check_source(path, "--data")


def eval_argv(args) -> list[str]:
    """The command line each local rank runs (launchers.local)."""
    argv = ["eval", args.eval_command, "--checkpoint", args.checkpoint, "--device", args.device,
            "--batch-size", str(args.batch_size)]
    argv += ["--tokenizer", args.tokenizer] if args.tokenizer else []
    argv += ["--output", args.output] if args.output else []
    if args.eval_command == "icl":
        argv += ["--task", args.task, "--shots", str(args.shots), "--seed", str(args.seed)]
        argv += ["--limit", str(args.limit)] if args.limit else []
        argv += ["--corpus", *args.corpus] if args.corpus else []
    else:
        argv += ["--data", *args.data] + (["--stride", str(args.stride)] if args.stride else [])
    return argv


def run_eval(args) -> str | None:
    from megagpt.eval.scorer import open_checkpoint
    from megagpt.parallel.distributed import shutdown_distributed

    scorer, tok, pc = open_checkpoint(args.checkpoint, args.tokenizer, args.device, args.batch_size)
    if args.eval_command == "perplexity":
        from megagpt.eval.perplexity import perplexity, read_stream

        result = perplexity(scorer, tok, read_stream(args.data, tok), args.stride or max(1, scorer.context // 2))
        line = (f"perplexity {result['perplexity']:.4f} over {result['tokens']:,} tokens ({result['bytes']:,} bytes, "
                f"{result['windows']} windows, stride {result['stride']}): {result['bits_per_token']:.4f} bits per "
                f"token, {result['bits_per_byte']:.4f} bits per byte")
    else:
        from megagpt.eval.icl import evaluate
        from megagpt.eval.tasks import load_task

        task = load_task(args.task)
        found = None
        if args.corpus and pc.rank == 0:  # text work: one rank reads the corpus
            from megagpt.eval.contamination import contamination, corpus_documents

            found = contamination(task, corpus_documents(args.corpus, tok))
            if args.limit:
                found["dirty"] = found["dirty"][:args.limit]
        result = evaluate(scorer, tok, task, args.shots, args.seed, args.limit, found)
        scores = {k: v for k, v in result.items()
                  if k not in ("rows", "task", "type", "records", "shots", "contamination", "prompts_cut",
                               "answers_cut")}
        line = (f"{result['task']} ({result['type']}, {result['records']} records, {args.shots}-shot): "
                + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
        if result["prompts_cut"] or result["answers_cut"]:
            line += (f"; cut to fit the context of {scorer.context} tokens: {result['prompts_cut']} prompts (their "
                     f"start), {result['answers_cut']} with an answer scored on its last tokens only")
        if found is not None:
            c = result["contamination"]
            whole = (f", {c['whole_records']} of them whole records shorter than {c['n']} words"
                     if c.get("whole_records") else "")
            line += (f"\ncontamination: {c['share']:.1%} of the task's {c['ngrams']} {c['n']}-grams{whole} are in the "
                     f"corpus; "
                     + "; ".join(f"{name} {c[name]['records']} records"
                                 + "".join(f", {k} {v:.4f}" for k, v in c[name].items() if k != "records")
                                 for name in ("clean", "dirty")))
    shutdown_distributed()
    if pc.rank != 0:
        return None
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=1)
    return line
