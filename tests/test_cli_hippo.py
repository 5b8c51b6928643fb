"""`ssmkit hippo` end to end: figure, MSE table, CSV input, clear errors."""
import json

import pytest
import torch

from ssmkit.reconstruction import hippo_figure
from ssmkit.signals import make_signal
from helpers import raises_naming


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
    with raises_naming(ValueError, "signal"):
        make_signal("square", 100)
    with pytest.raises(FileNotFoundError):
        make_signal(str(tmp_path / "missing.csv"), 100)
    bad = tmp_path / "bad.csv"
    bad.write_text("1\nnan\n")
    with pytest.raises(ValueError, match="NaN"):
        make_signal(str(bad), 100)
    with raises_naming(ValueError, "measure"):
        hippo_figure(tmp_path, ("legq",), progress=False)


def _csv(path, values, header="value"):
    path.write_text(header + "\n" + "\n".join(f"{x:.17g}" for x in values) + "\n")
    return path


def test_hippo_command_with_csv_prints_table_and_progress(tmp_path, capsys):
    from ssmkit.cli import main

    u = make_signal("whitenoise", 1500, seed=3)
    path = _csv(tmp_path / "sig.csv", u.tolist(), header="time_series")
    out = tmp_path / "out"
    assert main(["hippo", "--measure", "legs", "legt", "-N", "32", "--signal", str(path), "--out", str(out)]) == 0
    cap = capsys.readouterr()
    saved = json.loads((out / "hippo_mse.json").read_text())
    assert saved["length"] == 1500 and (out / "reconstruction.png").is_file()
    for m in ("legs", "legt"):  # the printed table holds the saved figures
        assert f"{saved['relative_mse'][m]:.3e}" in cap.out
    assert saved["relative_mse"]["legs"] < 1e-4  # measured 3.1e-06 (N = 32, 1,500 samples)
    assert "hippo:" in cap.err and "sample" in cap.err  # the progress bar


@pytest.mark.parametrize("content,needle", [
    ("value\n1\nfoo\n", "row 3 is not a number"),
    ("1\nnan\n", "NaN"),
    ("", "at least 2 numbers"),
    ("value\n1.5\n", "at least 2 numbers"),
    (b"\xff\xfe\x00\x01binary", "not a UTF-8 text CSV"),
    (None, "does not exist"),
])
def test_hippo_command_bad_csv_is_one_clear_line(tmp_path, capsys, content, needle):
    from ssmkit.cli import main

    path = tmp_path / "sig.csv"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    assert main(["hippo", "--measure", "legs", "--signal", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert needle in err and str(path) in err, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert not (tmp_path / "out" / "reconstruction.png").exists()


def test_library_modules_match_the_figure(tmp_path):
    from ssmkit.reconstruction import format_mse_table, reconstruct_history
    from ssmkit.signals import read_csv_column

    u = make_signal("steps", 1200, seed=1)
    res, recs = reconstruct_history(u, ("legt",), N=16)
    assert recs["legt"].shape == u.shape
    # the relative MSE is recomputed here from the reconstruction it reports
    assert res["legt"] == pytest.approx(float(((recs["legt"] - u) ** 2).mean() / u.var()), rel=1e-12)
    assert res == pytest.approx(hippo_figure(tmp_path, ("legt",), N=16, length=1200, signal="steps", seed=1,
                                             progress=False))
    assert f"{res['legt']:.3e}" in format_mse_table(res)
    path = _csv(tmp_path / "c.csv", [1.0, 2.5, -3.0], header="x")
    assert read_csv_column(path).tolist() == [1.0, 2.5, -3.0]
    with raises_naming(TypeError, "length"):
        make_signal("sine", 10.5)
    with raises_naming(ValueError, "bandlimit"):
        make_signal("whitenoise", 100, bandlimit=float("nan"))
    with raises_naming(TypeError, "seed"):
        make_signal("steps", 100, seed="a")
