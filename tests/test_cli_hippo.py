"""`ssmkit hippo` end to end: figure, MSE table, CSV input, clear errors."""
import json

import pytest
import torch

from ssmkit.commands.hippo import hippo_figure, make_signal


def test_hippo_figure_writes_outputs(tmp_path):
    res = hippo_figure(tmp_path, ("legs", "legt"), N=32, length=2000, signal="whitenoise", progress=False)
    assert (tmp_path / "reconstruction.png").stat().st_size > 10_000
    saved = json.loads((tmp_path / "hippo_mse.json").read_text())
    assert saved["relative_mse"] == pytest.approx(res)
    assert res["legs"] < 1e-3


def test_hippo_reads_csv(tmp_path):
    u = make_signal("sine", 500)
    path = tmp_path / "sig.csv"
    path.write_text("value\n" + "\n".join(f"{x:.17g}" for x in u.tolist()) + "\n")
    torch.testing.assert_close(make_signal(str(path), 0), u)
    res = hippo_figure(tmp_path / "out", ("legs",), N=64, signal=str(path), progress=False)
    assert res["legs"] < 1e-2


def test_hippo_cli_errors(tmp_path):
    with pytest.raises(ValueError, match="signal"):
        make_signal("square", 100)
    with pytest.raises(FileNotFoundError):
        make_signal(str(tmp_path / "missing.csv"), 100)
    bad = tmp_path / "bad.csv"
    bad.write_text("1\nnan\n")
    with pytest.raises(ValueError, match="NaN"):
        make_signal(str(bad), 100)
    with pytest.raises(ValueError, match="measure"):
        hippo_figure(tmp_path, ("legq",), progress=False)
