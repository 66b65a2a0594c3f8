"""Per-stage counts: documents in, kept, dropped by reason, bytes, seconds (and, for a stage made of
steps such as the heuristic filters, seconds per step; for the read stage, the records skipped as holding
no document, by kind, and for url, the pages kept with no host to judge them by; for pii, the addresses
replaced, by kind)."""

from __future__ import annotations

from collections import Counter


def _empty() -> dict:
    return {"in": 0, "kept": 0, "dropped": Counter(), "bytes_in": 0, "bytes_kept": 0, "seconds": 0.0}


class StageStats:
    def __init__(self):
        self.stages: dict[str, dict] = {}

    def _stage(self, name: str) -> dict:
        return self.stages.setdefault(name, _empty())

    def saw(self, stage: str, nbytes: int = 0) -> None:
        s = self._stage(stage)
        s["in"] += 1
        s["bytes_in"] += nbytes

    def kept(self, stage: str, nbytes: int = 0) -> None:
        s = self._stage(stage)
        s["kept"] += 1
        s["bytes_kept"] += nbytes

    def dropped(self, stage: str, reason: str) -> None:
        self._stage(stage)["dropped"][reason] += 1

    def skipped(self, stage: str, reason: str) -> None:
        self._stage(stage).setdefault("skipped", Counter())[reason] += 1

    def redacted(self, stage: str, counts: Counter) -> None:
        self._stage(stage).setdefault("redacted", Counter()).update(counts)

    def timed(self, stage: str, seconds: float) -> None:
        self._stage(stage)["seconds"] += seconds

    def step_seconds(self, stage: str) -> Counter:
        """The stage's seconds per step, for its steps to add to."""
        return self._stage(stage).setdefault("step_seconds", Counter())

    def to_dict(self) -> dict:
        return {k: {**v, "dropped": dict(sorted(v["dropped"].items())),
                    **{extra: dict(sorted(v[extra].items())) for extra in ("skipped", "redacted") if extra in v},
                    **({"step_seconds": dict(v["step_seconds"])} if "step_seconds" in v else {})}
                for k, v in self.stages.items()}


def merge_stats(parts: list[dict]) -> dict:
    """Sum per-shard stats (as dicts) stage by stage, keeping stage order of first appearance."""
    total: dict[str, dict] = {}
    for part in parts:
        for stage, s in part.items():
            t = total.setdefault(stage, _empty())
            for key in ("in", "kept", "bytes_in", "bytes_kept", "seconds"):
                t[key] += s[key]
            t["dropped"].update(s["dropped"])
            for extra in ("skipped", "redacted", "step_seconds"):
                if extra in s:
                    t.setdefault(extra, Counter()).update(s[extra])
    for t in total.values():
        t["dropped"] = dict(sorted(t["dropped"].items()))
        t["seconds"] = round(t["seconds"], 3)
        for extra in ("skipped", "redacted"):
            if extra in t:
                t[extra] = dict(sorted(t[extra].items()))
        if "step_seconds" in t:
            t["step_seconds"] = {k: round(v, 3) for k, v in t["step_seconds"].items()}
    return total
