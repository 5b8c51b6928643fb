"""`ssmkit demo` (the default command): its outputs, and that it removes only its own run."""
import json

from ssmkit.cli import main


def test_quick_demo_writes_its_outputs_and_reruns_over_its_own_run(tmp_path, capsys, one_thread):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert 0.0 <= summary["smnist_s4d"]["test_acc"] <= 1.0
    assert set(summary["hippo_relative_mse"]) == {"legt", "legs", "lagt", "fout"}
    assert (out / "hippo" / "reconstruction.png").is_file()
    assert (out / "smnist_s4d" / "LATEST").is_file() and (out / "smnist_s4d" / "result.json").is_file()
    # a second demo into the same folder replaces the demo's own run ...
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    # ... but never a folder it did not write
    mine = tmp_path / "mine"
    (mine / "smnist_s4d").mkdir(parents=True)
    (mine / "smnist_s4d" / "notes.txt").write_text("keep me")
    capsys.readouterr()
    assert main(["demo", "--quick", "--out", str(mine)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # refused before any work
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "smnist_s4d" in err[0] and "not a run of the demo" in err[0]
    assert (mine / "smnist_s4d" / "notes.txt").read_text() == "keep me"
