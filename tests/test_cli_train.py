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
    assert {(r.get("split"), r["step"]) for r in rows} >= {("train", 2), ("val", 2)}
    assert not any(r.get("split") == "test" for r in rows)  # the test split is never used during training
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


# --- one-line errors -------------------------------------------------------------------------
def _one_line_error(capsys, argv):
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("ssmkit train: error:") and err.count("\n") == 1 and "Traceback" not in err
    return err


@pytest.mark.parametrize("body,named", [
    ("seed: 1.5\n", "seed"),
    ("task_options: [1, 2]\n", "task_options"),
    ("layer: [s4d\n", "not valid YAML"),
    ("lr: .inf\n", "lr"),
    ("d_state: 3\n", "d_state"),
])
def test_bad_config_files_are_one_line_errors(body, named, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("task: copying\nlayer: s4d\n" + body if "layer:" not in body else "task: copying\n" + body)
    err = _one_line_error(capsys, ["train", "--config", str(cfg), "--out", str(tmp_path / "r")])
    assert named in err
    assert not (tmp_path / "r").exists()


def test_yaml_exponent_numbers_are_numbers(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lr: 1e-3\nweight_decay: 1e-2\n")
    assert main(["train", "--config", str(cfg), *TINY, "--out", str(tmp_path / "r")]) == 0
    written = json.loads((tmp_path / "r" / "config.json").read_text())
    assert (written["lr"], written["weight_decay"]) == (1e-3, 1e-2)


def test_out_naming_a_file_and_foreign_folders_are_one_line_errors(tmp_path, capsys):
    f = tmp_path / "f"
    f.write_text("x")
    assert "out_dir" in _one_line_error(capsys, ["train", *TINY, "--out", str(f)])
    d = tmp_path / "d"
    (d / "ckpt-00000010").mkdir(parents=True)
    (d / "ckpt-00000010" / "model.safetensors").write_bytes(b"user data")
    assert "holds no checkpoint" in _one_line_error(capsys, ["train", *TINY, "--out", str(d)])
    assert (d / "ckpt-00000010" / "model.safetensors").read_bytes() == b"user data" and f.read_text() == "x"


def test_divergence_and_incomplete_trainer_state_are_one_line_errors(tmp_path, capsys, monkeypatch):
    out = tmp_path / "r"
    assert main(["train", "--layer", "s4d", *TINY, "--out", str(out), "--pause-at", "1"]) == 0
    ckpt = out / (out / "LATEST").read_text().strip()
    good = (ckpt / "trainer.pt").read_bytes()
    torch.save({"optimizer": {}}, ckpt / "trainer.pt")
    assert "lacks" in _one_line_error(capsys, ["train", "--layer", "s4d", *TINY, "--out", str(out), "--resume"])
    (ckpt / "trainer.pt").write_bytes(good)
    import ssmkit.train.trainer as trainer

    real = trainer._loss_and_metric
    monkeypatch.setattr(trainer, "_loss_and_metric", lambda *a, **k: (lambda r: (r[0] * float("nan"),) + r[1:])(real(*a, **k)))
    assert "diverged" in _one_line_error(capsys, ["train", "--layer", "s4d", *TINY, "--out", str(tmp_path / "nan")])
    assert not (tmp_path / "nan").exists()  # the failed start left nothing behind
    with pytest.raises(FloatingPointError):  # --debug shows the real exception
        main(["--debug", "train", "--layer", "s4d", *TINY, "--out", str(tmp_path / "nan")])


# --- evaluate, recipes, compare --------------------------------------------------------------
def test_evaluate_any_split_of_the_best_or_latest_checkpoint(trained, capsys):
    result = json.loads((trained / "result.json").read_text())
    capsys.readouterr()
    assert main(["evaluate", str(trained), "--split", "val"]) == 0
    assert json.loads(capsys.readouterr().out)["acc"] == pytest.approx(result["val_acc"])
    for split in ("train", "test"):
        assert main(["evaluate", str(trained), "--split", split, "--which", "latest"]) == 0
        assert json.loads(capsys.readouterr().out)["split"] == split


def test_recipes_are_listed_valid_and_overridden_by_flags(tmp_path, capsys):
    from ssmkit.train.recipes import available_recipes, load_recipe

    names = available_recipes()
    assert set(names) >= {"smnist", "listops", "induction_heads", "selective_copying", "ucr"}
    for name in names:
        desc, data = load_recipe(name)
        assert desc and TrainConfig.from_dict(data).task == data["task"]
    capsys.readouterr()
    assert main(["recipes"]) == 0
    listed = capsys.readouterr().out
    assert all(n in listed for n in names)
    assert main(["train", "--recipe", "list"]) == 0 and capsys.readouterr().out == listed
    out = tmp_path / "r"
    assert main(["train", "--recipe", "selective_copying", "--task-opt", "n_train=8", "--task-opt", "n_test=4",
                 "--task-opt", "length=8", "--task-opt", "n_tokens=2", "--d-model", "8", "--max-steps", "1",
                 "--batch-size", "4", "--time-budget", "0", "--progress", "none", "--out", str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["layer"] == "mamba" and cfg["n_layers"] == 2 and cfg["d_model"] == 8  # recipe, then flags
    assert cfg["task_options"] == {"n_train": 8, "n_test": 4, "length": 8, "n_tokens": 2}
    assert main(["train", "--recipe", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "unknown recipe 'nope'" in capsys.readouterr().err


def test_recipe_layer_options_stay_with_the_recipe_layer(tmp_path):
    """The selective copying recipe sets Mamba's init; `--layer s4d` drops it (S4D has no such
    option), while `--layer-opt` still applies to the chosen layer."""
    from ssmkit.train.recipes import load_recipe

    assert load_recipe("selective_copying")[1]["layer_options"] == {"init": "mimetic"}
    small = ["--task-opt", "n_train=8", "--task-opt", "n_test=4", "--task-opt", "length=8", "--task-opt", "n_tokens=2",
             "--d-model", "8", "--max-steps", "1", "--batch-size", "4", "--time-budget", "0", "--progress", "none"]
    out = tmp_path / "s4d"
    assert main(["train", "--recipe", "selective_copying", "--layer", "s4d", "--layer-opt", "discretization=zoh",
                 *small, "--out", str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["layer"] == "s4d" and cfg["layer_options"] == {"discretization": "zoh"}
    out = tmp_path / "mamba"
    assert main(["train", "--recipe", "selective_copying", "--layer", "mamba", *small, "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["layer_options"] == {"init": "mimetic"}


def test_compare_prints_a_table_and_writes_one_figure(trained, tmp_path, capsys):
    other = tmp_path / "other"
    assert main(["train", "--layer", "rtf", *TINY, "--out", str(other)]) == 0
    capsys.readouterr()
    png = tmp_path / "cmp.png"
    assert main(["compare", f"{trained}=S4D", str(other), "--out", str(png)]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["run", "task", "layer"]
    assert any(l.startswith("S4D") and "s4d" in l for l in lines) and any(l.startswith("other") and "rtf" in l for l in lines)
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert main(["compare", str(tmp_path / "nowhere")]) == 2
