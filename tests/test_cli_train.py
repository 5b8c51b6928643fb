"""The training CLI: every layer trains through it, config files and flags, clear errors."""
import json
import shutil
import sys

import pytest
import torch
import yaml

from ssmkit.cli import main
from ssmkit.layers import available_layers
from ssmkit.train import TrainConfig


pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--task", "copying", "--task-opt", "n_train=8", "--task-opt", "n_test=4", "--task-opt", "n_tokens=2",
        "--task-opt", "delay=2", "--d-model", "8", "--n-layers", "1", "--d-state", "4", "--batch-size", "4",
        "--max-steps", "2", "--warmup-steps", "1", "--no-progress"]


@pytest.mark.parametrize("layer", available_layers())
def test_every_layer_trains_through_the_cli(layer, tmp_path, capsys):
    out = tmp_path / layer
    extra = ["--layer-opt", "headdim=4"] if layer == "mamba2" else []
    assert main(["train", "--layer", layer, *TINY, *extra, "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["step"] == 2 and 0.0 <= result["test_acc"] <= 1.0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["layer"] == layer
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert {(r.get("split"), r["step"]) for r in rows} >= {("train", 2), ("test", 2)}
    assert (out / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    assert main(["evaluate", str(out)]) == 0  # the checkpoint loads back into the same model
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["task"] == "copying" and evaluated["acc"] == pytest.approx(result["test_acc"])


def test_config_file_flags_override_and_resolved_config_is_written(tmp_path):
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(yaml.safe_dump({
        "task": "copying", "task_options": {"n_train": 8, "n_test": 4, "n_tokens": 2, "delay": 5},
        "layer": "s4d", "d_model": 8, "n_layers": 1, "d_state": 4, "batch_size": 4, "max_steps": 2, "lr": 0.01}))
    out = tmp_path / "r"
    assert main(["train", "--config", str(cfg_file), "--d-model", "12", "--lr", "0.002", "--task-opt", "delay=3",
                 "--out", str(out), "--no-progress"]) == 0
    written = json.loads((out / "config.json").read_text())
    expected = TrainConfig(task="copying", task_options={"n_train": 8, "n_test": 4, "n_tokens": 2, "delay": 3},
                           layer="s4d", d_model=12, n_layers=1, d_state=4, batch_size=4, max_steps=2, lr=0.002).to_dict()
    assert written == expected  # file values, overridden by the flags, every field resolved
    ckpt_cfg = json.loads(next(out.glob("ckpt-*/config.json")).read_text())
    assert ckpt_cfg == expected
    # unknown keys and bad values in a file are refused before anything is written
    cfg_file.write_text("task: copying\nd_modle: 8\n")
    assert main(["train", "--config", str(cfg_file), "--out", str(tmp_path / "bad")]) == 2
    cfg_file.write_text("task: copying\nlayer: s4d\nbatch_size: 0\n")
    assert main(["train", "--config", str(cfg_file), "--out", str(tmp_path / "bad")]) == 2
    assert main(["train", "--config", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", "--layer", "s4d", *TINY, "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("command", ["evaluate", "generate"])
def test_missing_or_corrupt_checkpoint_is_a_clear_error(command, trained, tmp_path, capsys):
    extra = ["--prompt", "2 3"] if command == "generate" else []
    capsys.readouterr()
    assert main([command, str(tmp_path / "nowhere"), *extra]) == 2
    assert "does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([command, str(empty), *extra]) == 2
    assert "not a checkpoint" in capsys.readouterr().err
    broken = tmp_path / "broken"
    shutil.copytree(trained, broken)
    ckpt = broken / (broken / "LATEST").read_text().strip()
    before = {p: p.read_bytes() for p in broken.rglob("*") if p.is_file()}
    good = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(b"truncated")
    assert main([command, str(broken), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ssmkit {command}: error:") and "corrupt" in err and "Traceback" not in err
    (ckpt / "model.safetensors").write_bytes(good)
    (ckpt / "config.json").write_text("{")
    assert main([command, str(broken), *extra]) == 2
    assert "corrupt" in capsys.readouterr().err
    before[ckpt / "config.json"] = b"{"
    after = {p: p.read_bytes() for p in broken.rglob("*") if p.is_file()}
    assert after == before  # nothing written or removed


def test_generate_needs_a_token_model(tmp_path, capsys):
    out = tmp_path / "cls"
    assert main(["train", "--task", "adding", "--task-opt", "n_train=8", "--task-opt", "n_test=4", "--task-opt", "length=10",
                 "--layer", "s4d", "--d-model", "8", "--n-layers", "1", "--d-state", "4", "--max-steps", "1",
                 "--batch-size", "4", "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["generate", str(out), "--prompt", "1 2"]) == 2
    assert "token task" in capsys.readouterr().err


def test_tasks_lists_sizes(capsys):
    assert main(["tasks"]) == 0
    text = capsys.readouterr().out
    assert "copying" in text and "2,000 train / 200 val / 200 test sequences, length 71" in text
    assert "4,050 train / 450 val / 500 test sequences, length 784" in text  # smnist
    assert "sktime" in text


def test_unknown_layer_and_missing_sktime(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--layer", "lstm", "--out", str(tmp_path / "x")])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "sktime", None)  # as if it were not installed
    assert main(["train", "--task", "sktime", "--layer", "s4d", "--max-steps", "1", "--out", str(tmp_path / "s"),
                 "--no-progress"]) == 2
    assert "pip install sktime" in capsys.readouterr().err
