"""Checkpoints and the shared atomic write: rotation touches only this run's checkpoints, the
best one is kept, incomplete trainer states are refused by name, an interrupted write leaves
the old file."""
import json

import pytest
import torch

from ssmkit._io import atomic_write, atomic_write_json
from ssmkit.train import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from ssmkit.train.checkpoint import read_manifest

STATE = {"optimizer": {}, "rng": torch.get_rng_state(), "step": 0}


def _save(run, step, **kw):
    model = torch.nn.Linear(2, 2)
    return save_checkpoint(run, step, model, {**STATE, "step": step}, {"step": step}, **kw)


def test_rotation_removes_only_checkpoints_this_run_wrote(tmp_path):
    run = tmp_path / "run"
    foreign = run / "ckpt-00000001"
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("mine")
    _save(run, 2)
    _save(run, 3)
    assert (foreign / "notes.txt").read_text() == "mine"  # not written by the run: untouched
    assert not (run / "ckpt-00000002").exists() and (run / "ckpt-00000003").is_dir()
    assert read_manifest(run)["checkpoints"] == ["ckpt-00000003"]


def test_the_best_checkpoint_survives_rotation(tmp_path):
    run = tmp_path / "run"
    _save(run, 2, best=True)
    _save(run, 3)
    _save(run, 4)
    assert sorted(p.name for p in run.glob("ckpt-*")) == ["ckpt-00000002", "ckpt-00000004"]
    assert latest_checkpoint(run).name == "ckpt-00000004"
    assert latest_checkpoint(run, which="best").name == "ckpt-00000002"
    _save(run, 5, best=True)
    assert sorted(p.name for p in run.glob("ckpt-*")) == ["ckpt-00000005"]
    assert json.loads((latest_checkpoint(run, "best") / "config.json").read_text()) == {"step": 5}


def test_a_foreign_folder_of_the_same_name_is_refused(tmp_path):
    run = tmp_path / "run"
    (run / "ckpt-00000007").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="not written by this run"):
        _save(run, 7)
    assert list((run / "ckpt-00000007").iterdir()) == []


def test_trainer_state_without_its_keys_is_a_named_error(tmp_path):
    run = tmp_path / "run"
    ckpt = _save(run, 2)
    torch.save({"optimizer": {}}, ckpt / "trainer.pt")
    with pytest.raises(CheckpointError, match="lacks step, rng"):
        load_checkpoint(run)
    torch.save([1, 2], ckpt / "trainer.pt")
    with pytest.raises(CheckpointError, match="not a mapping"):
        load_checkpoint(run)
    load_checkpoint(run, load_trainer_state=False)  # the weights alone still load


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    p = tmp_path / "f.json"
    atomic_write_json(p, {"a": 1})

    def dies(fh):
        fh.write(b"{\"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(p, dies)
    assert json.loads(p.read_text()) == {"a": 1}
    assert [q.name for q in tmp_path.iterdir()] == ["f.json"]  # no temporary file left behind
