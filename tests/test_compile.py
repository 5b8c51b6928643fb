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
import copy, json, sys, torch
from ssmkit.models import Backbone, SequenceClassifier
from ssmkit.ops import _native

def run(model, x):
    y = model(x)
    y.square().sum().backward()
    return y.detach(), [p.grad.clone() for p in model.parameters()]

def err(a, ref):
    return float((a.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30))

out = {}
for layer in sys.argv[1:]:
    torch.manual_seed(0)
    kw = {"l_max": 64} if layer in ("rtf", "s4") else {}
    m = SequenceClassifier(Backbone(32, 1, layer, kw, d_input=1), 10)
    x = torch.randn(2, 64, 1)
    y64, g64 = run(copy.deepcopy(m).double(), x.double())  # the float64 reference, eager
    y, g = run(m, x)  # eager float32: the native kernels
    m.zero_grad()
    torch._dynamo.reset()
    yc, gc = run(torch.compile(m, backend="aot_eager"), x)  # compiled float32: the torch paths
    out[layer] = dict(eager=max([err(y, y64)] + [err(a, r) for a, r in zip(g, g64)]),
                      compiled=max([err(yc, y64)] + [err(a, r) for a, r in zip(gc, g64)]),
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
        # eager runs the native kernels, the compiled model the torch paths: each against the
        # float64 model within the float32 tolerance of docs/reliability.md (2e-3 relative
        # max-norm error, outputs and every parameter's gradient); a wrong path would be O(1)
        assert e["eager"] < 2e-3 and e["compiled"] < 2e-3, (layer, e)
