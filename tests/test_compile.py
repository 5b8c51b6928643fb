"""``torch.compile`` of a whole model: every layer family traces (the native kernels, ctypes calls
the compiler cannot see into, step aside for their torch paths while a trace runs) and the
compiled model gives the eager model's outputs and gradients. Tracing Mamba-2's native gated
norm used to abort the process inside torch's dynamo (no exception the trainer's fallback could
catch). backend="aot_eager" traces forward and backward as torch.compile does, without
generating C++ (seconds, not minutes); a subprocess keeps a crash from taking the test run
down and keeps dynamo's caches out of the other tests."""
import json
import subprocess
import sys


from ssmkit.layers import available_layers

SCRIPT = r"""
import json, sys, torch
from ssmkit.models import Backbone, SequenceClassifier
from ssmkit.ops import _native
out = {}
for layer in sys.argv[1:]:
    torch.manual_seed(0)
    kw = {"l_max": 64} if layer in ("rtf", "s4") else {}
    m = SequenceClassifier(Backbone(32, 1, layer, kw, d_input=1), 10)
    x = torch.randn(2, 64, 1)
    y = m(x)
    y.square().sum().backward()
    g = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    torch._dynamo.reset()
    y2 = torch.compile(m, backend="aot_eager")(x)
    y2.square().sum().backward()
    out[layer] = dict(
        out=float((y2 - y).abs().max() / y.abs().max()),
        grad=max(float((p.grad - q).abs().max() / q.abs().max().clamp_min(1e-30)) for p, q in zip(m.parameters(), g)),
        native=_native.available())
print(json.dumps(out))
"""


def test_every_layer_family_compiles_and_matches_eager():
    layers = sorted(available_layers())
    r = subprocess.run([sys.executable, "-c", SCRIPT, *layers], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"exit {r.returncode}: {r.stderr[-2000:]}"
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(res) == set(layers)
    for layer, e in res.items():
        # eager runs the native kernels, the compiled model the torch paths: both float32, so
        # they differ by rounding (~1e-6 relative); a wrong path would be O(1)
        assert e["out"] < 1e-4 and e["grad"] < 1e-3, (layer, e)
