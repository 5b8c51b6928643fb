"""ssmkit.inspection and the `inspect` / `reduce` commands: the numbers against independent
references (closed forms, the layers' own forward passes), then the CLI end to end."""
import json
import math
import re

import numpy as np
import pytest
import torch

from helpers import assert_close_to_reference, raises_naming
from ssmkit.cli import main
from ssmkit.inspection import inspect_layer, inspect_model, memory_length
from ssmkit.layers import RTF, S4D, S5, Mamba
from ssmkit.lti import hankel_singular_values
from ssmkit.models import Backbone, LanguageModel
from ssmkit.tasks import build_task

pytestmark = pytest.mark.usefixtures("one_thread")


def test_memory_length_of_a_geometric_kernel():
    # K_k = ρ^k: the first m taps hold 1 - ρ^{2m} of the energy, so m = ceil(log 0.01 / (2 log ρ))
    for rho in (0.5, 0.9, 0.99):
        K = torch.tensor([rho**k for k in range(5000)], dtype=torch.float64)[None]
        m = memory_length(K, 0.99, total=np.array([1 / (1 - rho**2)]))
        assert m[0] == math.ceil(math.log(0.01) / (2 * math.log(rho)))
    assert np.isinf(memory_length(K[:, :100], 0.99, total=np.array([1 / (1 - 0.99**2)]))[0])
    with raises_naming(ValueError, "fraction"):
        memory_length(K, 1.5)


def test_s4d_inspection_matches_the_layer():
    torch.manual_seed(0)
    layer = S4D(3, d_state=8, dt_min=0.05, dt_max=0.3)
    ins = inspect_layer(layer, L=2000, n_freq=50)
    lay = layer.double()
    K = lay.kernel(2000).detach()
    assert_close_to_reference(torch.from_numpy(ins.kernels), K, 1e-12, "kernels")
    # poles: e^{Δλ} from the parameters, with their conjugates
    lam = torch.complex(-torch.exp(lay.A_real_log), lay.A_imag).detach()
    ref = torch.exp(torch.exp(lay.log_dt.detach())[:, None] * lam).numpy()
    for h in range(3):
        got = np.sort_complex(ins.poles[h])
        np.testing.assert_allclose(got, np.sort_complex(np.concatenate([ref[h], ref[h].conj()])), atol=1e-12)
    # frequency response: D + Σ_k K_k e^{-iωk} (the kernel has decayed by lag 2000)
    w = ins.omega
    ref_H = lay.D.detach().numpy()[:, None] + K.numpy() @ np.exp(-1j * np.outer(np.arange(2000), w))
    np.testing.assert_allclose(ins.response, ref_H, rtol=1e-8, atol=1e-10)
    # memory from the Gramian's energy equals the one from the (complete) window
    np.testing.assert_array_equal(ins.memory, memory_length(K, 0.99))
    np.testing.assert_allclose(ins.dt, torch.exp(lay.log_dt).detach().numpy())
    Ad, Bd, C, _ = lay.discrete_ssm()
    np.testing.assert_allclose(ins.hsv[1], hankel_singular_values(Ad[1].detach(), Bd[1].detach(), C[1].detach()))


def test_rtf_poles_are_the_roots_of_its_denominator():
    torch.manual_seed(1)
    layer = RTF(2, d_state=4, l_max=64, init="montel")
    ins = inspect_layer(layer, L=256, n_freq=20)
    for h in range(2):
        a = layer.a[h].detach().double().numpy()
        roots = np.roots(np.concatenate([[1.0], a]))  # λ^N + a_1 λ^{N-1} + … + a_N
        np.testing.assert_allclose(np.sort_complex(ins.poles[h]), np.sort_complex(roots), atol=1e-10)


def test_s5_inspection_against_its_forward_pass():
    torch.manual_seed(2)
    layer = S5(3, d_state=4, dt_min=0.1, dt_max=0.5).double()
    ins = inspect_layer(layer, L=40, n_freq=10)
    lam = torch.complex(-torch.exp(layer.A_real_log), layer.A_imag).detach()
    ref = torch.exp(torch.exp(layer.log_dt.detach()) * lam).numpy()
    np.testing.assert_allclose(np.sort_complex(ins.poles[0]), np.sort_complex(np.concatenate([ref, ref.conj()])),
                               atol=1e-12)
    # a tiny impulse on channel h: the output is GELU(ε K_k) ≈ ε K_k / 2 for k >= 1
    eps = 1e-7
    for h in range(3):
        u = torch.zeros(1, 40, 3, dtype=torch.float64)
        u[0, 0, h] = eps
        y = layer(u).detach()[0, 1:, h].numpy()
        np.testing.assert_allclose(2 * y / eps, ins.kernels[h, 1:], rtol=1e-5, atol=1e-5 * np.abs(ins.kernels[h]).max())


@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
def test_selective_dt_over_task_inputs_equals_the_recurrences_decay(kind):
    # Reference: one step from states 0 and 1 with the same input differs by exp(Δ·A), so
    # Δ = log(difference) / A, read through the public step and A_log.
    torch.manual_seed(3)
    task = build_task("copying", n_train=4, n_test=3, n_tokens=2, delay=2)
    opts = {"d_state": 4} if kind == "mamba" else {"d_state": 4, "headdim": 4}
    model = LanguageModel(Backbone(8, 1, kind, opts, vocab_size=task.vocab_size), task.num_classes).double()
    ins = inspect_model(model, task, batch_size=2)
    assert [i.kind for i in ins] == [kind]
    layer = model.backbone.blocks[0].layer
    seen = []
    handle = layer.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    from ssmkit.tasks.base import pad_collate

    x, _, mask = pad_collate([task.test[i] for i in range(2)])
    with torch.no_grad():
        model(x, mask=None if bool(mask.all()) else mask)
    handle.remove()
    xin = seen[0]
    A = -torch.exp(layer.A_log.detach().double())
    ref = []
    with torch.no_grad():
        state = layer.initial_state(xin.shape[0], dtype=torch.float64)
        for t in range(xin.shape[1]):
            conv, h = state
            _, (_, h0) = layer.step(xin[:, t], (conv, torch.zeros_like(h)))
            _, (_, h1) = layer.step(xin[:, t], (conv, torch.ones_like(h)))
            decay = (h1 - h0)  # exp(Δ A) broadcast over the state
            if kind == "mamba":
                dt = torch.log(decay[..., 0]) / A[:, 0]  # (B, E)
            else:
                dt = torch.log(decay[:, :, 0, 0]) / A  # (B, H)
            ref.append(dt)
            _, state = layer.step(xin[:, t], state)
    ref = torch.stack(ref, 1)[mask].numpy()  # (positions, channels)
    np.testing.assert_allclose(ins[0].dt, ref, rtol=1e-8)


def test_inspect_layer_refuses_other_layers():
    with pytest.raises(TypeError, match="layer must be"):
        inspect_layer(Mamba(4))
    with raises_naming(ValueError, "L"):
        inspect_layer(S4D(2, d_state=2), L=0)
    with pytest.raises(ValueError, match="task is required"):
        inspect_model(Backbone(4, 1, "mamba2", {"headdim": 4}))


TINY = ["--task", "copying", "--task-opt", "n_train=8", "--task-opt", "n_test=4", "--task-opt", "n_tokens=2",
        "--task-opt", "delay=2", "--d-model", "8", "--n-layers", "1", "--batch-size", "4",
        "--max-steps", "3", "--warmup-steps", "1", "--no-progress"]


def test_cli_inspect_and_reduce_end_to_end(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--layer", "s4d", "--d-state", "8", *TINY, "--out", str(run)]) == 0
    capsys.readouterr()
    # reduce to order 3 -> S4D with 2 modes (d_state 4); evaluate, generate and inspect accept it
    out = tmp_path / "small"
    assert main(["reduce", str(run), "--order", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "measured max" in printed
    rec = json.loads((out / "reduction.json").read_text())
    assert rec["d_state"] == 4 and rec["target"] == "s4d"
    for r in rec["layers"].values():
        assert max(r["orders"]) <= 3 and all(e <= b for e, b in zip(r["error"], r["bound"]))
    assert json.loads(next(out.glob("ckpt-*/config.json")).read_text())["d_state"] == 4
    assert main(["evaluate", str(out)]) == 0
    assert "acc" in json.loads(capsys.readouterr().out)
    assert main(["generate", str(out), "--prompt", "1 2 0", "--max-new-tokens", "3"]) == 0
    assert len(capsys.readouterr().out.split()) == 6
    # inspect (the reduced run): every figure the page shows exists, with a caption
    assert main(["inspect", str(out), "--out", str(tmp_path / "ins"), "--length", "256"]) == 0
    page = (tmp_path / "ins" / "index.html").read_text()
    imgs = re.findall(r'<img src="([^"]+)"', page)
    assert len(imgs) == 1 + 6 and page.count("<figcaption>") == len(imgs)
    for f in imgs:
        assert (tmp_path / "ins" / f).read_bytes()[:4] == b"\x89PNG"
    numbers = json.loads((tmp_path / "ins" / "inspection.json").read_text())
    assert [n["kind"] for n in numbers] == ["s4d"] and len(numbers[0]["memory"]) == 8
    assert all(len(n["hsv"][0]) == 4 for n in numbers)  # the reduced state
    # never overwrite: a second reduce into the same folder fails and leaves it as it was
    before = sorted(p.name for p in out.rglob("*"))
    assert main(["reduce", str(run), "--order", "2", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert sorted(p.name for p in out.rglob("*")) == before
    # --tolerance: the smallest order whose bound is under it
    hsv = [np.array(r["hsv"]) for r in rec["layers"].values()]
    tol = max(2 * h[:, 4:].sum(1).max() for h in hsv) * 1.001  # order 4 suffices, order 3 may not
    assert main(["reduce", str(run), "--tolerance", str(tol), "--out", str(tmp_path / "tol")]) == 0
    rec = json.loads((tmp_path / "tol" / "reduction.json").read_text())
    assert all(max(r["bound"]) <= tol for r in rec["layers"].values())
    # no order below the Hankel singular values' own answer; above it only if S4D's modes force it
    needed = max(min(r for r in range(9) if 2 * row[r:].sum() <= tol) for h in hsv for row in h)
    assert needed <= rec["order"] < 8 and rec["requested_order"] is None
    assert main(["evaluate", str(tmp_path / "tol")]) == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left behind


def test_cli_reduce_refuses_runs_without_lti_layers(tmp_path, capsys):
    run = tmp_path / "m"
    assert main(["train", "--layer", "mamba", "--d-state", "4", *TINY, "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["reduce", str(run), "--order", "2", "--out", str(tmp_path / "r")]) == 2
    assert "no LTI layer" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    assert main(["inspect", str(run), "--out", str(tmp_path / "i")]) == 0  # Mamba: the Δ distribution
    assert (tmp_path / "i" / "backbone_blocks_0_layer_dt.png").is_file()
