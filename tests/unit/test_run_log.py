"""What a run prints and records per step: a batch job's log gets a line every train.log_interval steps."""

import json

from megagpt.train.metrics import RunLog


def test_without_a_progress_bar_a_line_every_log_interval_steps_and_the_last(tmp_path, capsys):
    log = RunLog(str(tmp_path), True, 5, tensorboard=False, progress=False, log_interval=2)
    for step in range(1, 6):
        log.step({"step": step, "loss": 8.0 - step / 10, "lr": 1e-3, "tokens_per_s": 1000.0})
    log.evaluation({"step": 5, "loss": 7.25, "ppl": 1408.1})
    log.close()
    assert capsys.readouterr().out.splitlines() == [
        "pretrain step 2/5: loss 7.8000, lr 1.00e-03, tok_s 1000",
        "pretrain step 4/5: loss 7.6000, lr 1.00e-03, tok_s 1000",
        "pretrain step 5/5: loss 7.5000, lr 1.00e-03, tok_s 1000",
        "step 5: held-out loss 7.2500, perplexity 1408.10"]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]  # every step recorded, whatever is printed
