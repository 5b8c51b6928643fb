"""models.pack_parameters: every parameter in one contiguous, huge-page-advised block."""
import sys

import pytest
import torch

from helpers import raises_naming
from ssmkit import Backbone, LanguageModel
from ssmkit.models import pack_parameters
from ssmkit.runtime import huge_page_buffer


def _lm(dtype=torch.float32):
    torch.manual_seed(0)
    bb = Backbone(32, 2, "mamba", {"d_state": 8}, vocab_size=50, norm="rms", residual_in_fp32=True, dtype=dtype)
    return LanguageModel(bb, tie_embeddings=True, head_bias=False).eval()


def _vm_flags(addr: int) -> str:
    """The VmFlags line of the mapping of this process that contains ``addr`` (Linux smaps)."""
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and all(c in "0123456789abcdef-" for c in head):
                lo, hi = (int(v, 16) for v in head.split("-"))
                inside = lo <= addr < hi
            elif inside and line.startswith("VmFlags:"):
                return line
    raise AssertionError(f"no mapping contains {addr:#x}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_parameters_share_one_aligned_block_and_compute_the_same(dtype):
    model = _lm(dtype)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = {n: id(p) for n, p in model.named_parameters()}
    tokens = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        ref = model(tokens)
    nbytes = pack_parameters(model)
    params = list(model.parameters())
    assert nbytes >= sum(p.numel() * p.element_size() for p in params)
    storages = {p.untyped_storage().data_ptr() for p in params}
    assert len(storages) == 1, "every parameter should live in one block"
    for n, p in model.named_parameters():
        assert id(p) == ids[n] and p.dtype == before[n].dtype and p.is_contiguous() and p.data_ptr() % 64 == 0
        assert torch.equal(p.detach(), before[n]), n
    assert model.head.weight is model.backbone.encoder.weight  # tying kept
    with torch.no_grad():
        assert torch.equal(model(tokens), ref)
    starts = sorted((p.data_ptr(), p.numel() * p.element_size()) for p in params)
    for (a, n), (b, _) in zip(starts, starts[1:]):
        assert a + n <= b, "packed parameters overlap"


def test_a_packed_model_still_trains():
    model = _lm()
    pack_parameters(model)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    tokens = torch.randint(0, 50, (2, 9))
    w0 = model.backbone.blocks[0].layer.in_proj.weight.detach().clone()
    loss = model(tokens).logsumexp(-1).mean()
    loss.backward()
    opt.step()
    assert all(p.grad is not None for p in model.parameters())
    assert not torch.equal(model.backbone.blocks[0].layer.in_proj.weight.detach(), w0)


@pytest.mark.skipif(sys.platform != "linux", reason="madvise and /proc/self/smaps are Linux")
def test_the_block_is_advised_for_huge_pages_and_two_mb_aligned():
    block = huge_page_buffer(5 << 20)
    assert block.dtype == torch.uint8 and block.numel() == 5 << 20
    assert block.data_ptr() % (2 << 20) == 0
    flags = _vm_flags(block.data_ptr())
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            thp = f.read()
    except OSError:
        thp = "[never]"
    if "[never]" not in thp:
        assert " hg" in flags, flags  # MADV_HUGEPAGE recorded on the mapping
    block.fill_(1)
    assert int(block.sum()) == 5 << 20


def test_bad_arguments_are_named():
    with raises_naming(TypeError, "module"):
        pack_parameters("model")
    with raises_naming(ValueError, "nbytes"):
        huge_page_buffer(0)
    assert pack_parameters(torch.nn.ReLU()) == 0  # no parameters: nothing to do
