"""train.keep_last: which checkpoints a save prunes (in-process, on directories shaped as checkpoints)."""

import json

from megagpt.train.checkpoint import LATEST, META, candidates, complete_tags, prune, tag_for


def saved(root, step, latest=True):
    (root / tag_for(step)).mkdir(parents=True)
    (root / tag_for(step) / META).write_text(json.dumps({"step": step}))
    if latest:
        (root / LATEST).write_text(tag_for(step) + "\n")


def test_keep_last_keeps_the_newest_up_to_the_save(tmp_path):
    for step in (10, 20, 30, 40):
        saved(tmp_path, step)
        prune(str(tmp_path), 2, step)
    assert complete_tags(str(tmp_path)) == [tag_for(30), tag_for(40)]
    prune(str(tmp_path), 0, 40)  # 0: keep all
    assert complete_tags(str(tmp_path)) == [tag_for(30), tag_for(40)]


def test_a_newer_checkpoint_than_the_save_does_not_prune_the_save(tmp_path):
    """step 40 is complete but not `latest` (its save died before `latest` moved, or the resume skipped it as
    damaged): the run resumed from 30 and saved 33 (another train.save_interval, keep_last=1). Pruning counted 40
    in and deleted 33, the checkpoint `latest` named: the next resume found no usable checkpoint."""
    saved(tmp_path, 30)
    saved(tmp_path, 40, latest=False)
    saved(tmp_path, 33)
    prune(str(tmp_path), 1, 33)
    assert complete_tags(str(tmp_path)) == [tag_for(33), tag_for(40)]
    assert candidates(str(tmp_path))[0] == str(tmp_path / tag_for(33))
    saved(tmp_path, 36)
    prune(str(tmp_path), 1, 36)
    assert complete_tags(str(tmp_path)) == [tag_for(36), tag_for(40)]
