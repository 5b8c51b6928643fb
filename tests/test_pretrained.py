"""Released Mamba / Mamba-2 checkpoint layouts: tiny random models built with transformers (no
network), saved to a temporary folder, loaded by ssmkit: same logits, same greedy tokens, the
round trip back to transformers, the mamba_ssm layout, named errors, text through a tokenizer."""
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM  # noqa: E402

from ssmkit.cli import main  # noqa: E402
from ssmkit.pretrained import PretrainedError, load_pretrained, save_pretrained  # noqa: E402

from helpers import assert_close_to_reference, raises_naming  # noqa: E402

V = 40  # vocabulary of the tiny models (a multiple of 8: the padded size)


def _tiny(kind: str, tied: bool, ngroups: int = 1, seed: int = 0):
    torch.manual_seed(seed)
    if kind == "mamba":
        cfg = MambaConfig(vocab_size=V, hidden_size=16, state_size=4, num_hidden_layers=2, tie_word_embeddings=tied,
                          eos_token_id=None, pad_token_id=0)
        ref = MambaForCausalLM(cfg)
    else:
        cfg = Mamba2Config(vocab_size=V, hidden_size=16, state_size=8, num_hidden_layers=2, num_heads=4, head_dim=8,
                           n_groups=ngroups, chunk_size=8, tie_word_embeddings=tied, eos_token_id=None, pad_token_id=0)
        ref = Mamba2ForCausalLM(cfg)
    with torch.no_grad():  # norms and D away from their all-ones init, so a wrong mapping shows
        for n, p in ref.named_parameters():
            if "norm" in n or n.endswith(".D"):
                p.add_(torch.randn_like(p) * 0.3)
    return ref.eval()


def _greedy_reference(ref, prompt, n):
    """Greedy tokens by full forward passes of the transformers model (no cache)."""
    out = prompt
    with torch.no_grad():
        for _ in range(n):
            out = torch.cat([out, ref(out).logits[:, -1].argmax(-1, keepdim=True)], 1)
    return out


CASES = [("mamba", True, 1), ("mamba", False, 1), ("mamba2", True, 1), ("mamba2", False, 2)]


@pytest.mark.parametrize("kind,tied,ngroups", CASES)
def test_transformers_folder_loads_to_the_same_model_and_round_trips(tmp_path, kind, tied, ngroups):
    ref = _tiny(kind, tied, ngroups)
    ref.save_pretrained(tmp_path / "hf")
    model, tok = load_pretrained(tmp_path / "hf")
    assert tok is None and model.tie_embeddings == tied
    assert (model.head.weight is model.backbone.encoder.weight) == tied
    # on the CPU every parameter lives in one packed block (models.pack_parameters)
    assert len({p.untyped_storage().data_ptr() for p in model.parameters()}) == 1
    x = torch.randint(0, V, (2, 21))  # 21: not a multiple of the chunk size 8
    with torch.no_grad():
        expected = ref(x).logits
        got = model(x)
    assert_close_to_reference(got, expected, 1e-5, "logits")
    # greedy decoding: 32 new tokens, recurrent steps in ssmkit vs full forwards in transformers
    assert torch.equal(model.generate(x[:1], 32, temperature=0), _greedy_reference(ref, x[:1], 32))
    # ssmkit -> transformers: its own class loads the folder and gives the same logits
    save_pretrained(model, tmp_path / "back")
    cls = MambaForCausalLM if kind == "mamba" else Mamba2ForCausalLM
    again = cls.from_pretrained(tmp_path / "back").eval()
    with torch.no_grad():
        assert_close_to_reference(again(x).logits, got, 1e-6, "round-trip logits")


def _write_mamba_ssm(ref, folder, kind, vocab, shards=1):
    """A mamba_ssm-layout folder (MambaLMHeadModel's config and names) from a transformers model."""
    folder.mkdir()
    c = ref.config
    if kind == "mamba":
        ssm = {"layer": "Mamba1", "d_state": c.state_size, "d_conv": c.conv_kernel, "expand": c.expand}
    else:
        ssm = {"layer": "Mamba2", "d_state": c.state_size, "d_conv": c.conv_kernel, "expand": c.expand,
               "headdim": c.head_dim, "ngroups": c.n_groups, "chunk_size": c.chunk_size}
    cfg = {"d_model": c.hidden_size, "d_intermediate": 0, "n_layer": c.num_hidden_layers, "vocab_size": vocab,
           "ssm_cfg": ssm, "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True, "residual_in_fp32": True,
           "fused_add_norm": True, "pad_vocab_size_multiple": 8, "tie_embeddings": c.tie_word_embeddings}
    (folder / "config.json").write_text(json.dumps(cfg))
    sd = {k.replace("backbone.embeddings.", "backbone.embedding."): v.clone() for k, v in ref.state_dict().items()}
    sd.setdefault("lm_head.weight", sd["backbone.embedding.weight"])  # mamba_ssm keeps the tied head in its file
    if shards == 1:
        torch.save(sd, folder / "pytorch_model.bin")
        return
    keys = sorted(sd)
    weight_map = {}
    for i in range(shards):
        name = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = {k: sd[k] for k in keys[i::shards]}
        torch.save(part, folder / name)
        weight_map.update({k: name for k in part})
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


@pytest.mark.parametrize("kind,shards", [("mamba", 1), ("mamba2", 2)])
def test_mamba_ssm_folder_with_vocabulary_padding_loads_to_the_same_model(tmp_path, kind, shards):
    ref = _tiny(kind, tied=True, ngroups=1, seed=1)
    _write_mamba_ssm(ref, tmp_path / "ms", kind, vocab=37, shards=shards)  # 37 padded to 40
    model, _ = load_pretrained(tmp_path / "ms")
    assert model.backbone.vocab_size == 37 and model.backbone.padded_vocab_size == V
    x = torch.randint(0, 37, (2, 13))
    with torch.no_grad():
        assert_close_to_reference(model(x), ref(x).logits, 1e-5, "logits")
    # ssmkit writes the mamba_ssm layout too, and reads it back to the same logits
    save_pretrained(model, tmp_path / "ms2", layout="mamba_ssm")
    cfg = json.loads((tmp_path / "ms2" / "config.json").read_text())
    assert cfg["vocab_size"] == 37 and cfg["pad_vocab_size_multiple"] == 8
    again, _ = load_pretrained(tmp_path / "ms2")
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)


def test_half_precision_weights_and_bfloat16_inference(tmp_path):
    ref = _tiny("mamba2", tied=False, ngroups=2, seed=2)
    model, _ = load_pretrained(_saved(ref, tmp_path / "f32"))
    save_pretrained(model, tmp_path / "f16", dtype="float16")  # float16 weights on disk
    from safetensors.torch import load_file
    assert load_file(str(tmp_path / "f16" / "model.safetensors"))["lm_head.weight"].dtype == torch.float16
    x = torch.randint(0, V, (2, 19))
    with torch.no_grad():
        full = model(x)
        m16, _ = load_pretrained(tmp_path / "f16")  # loaded in float32
        assert_close_to_reference(m16(x), full, 1e-2, "float16 weights")  # 2^-11 rounding of each weight
        bf, _ = load_pretrained(tmp_path / "f32", dtype="bfloat16")
        assert bf.head.weight.dtype == torch.bfloat16
        assert bf.backbone.blocks[0].layer.A_log.dtype == torch.float32  # SSM parameters stay float32
        assert bf.backbone.initial_state(1)[0][1].dtype == torch.float32  # so does the recurrent state
        assert_close_to_reference(bf(x).float(), full, 3e-2, "bfloat16 logits")  # the documented tolerance
        out = bf.generate(x, 4, temperature=0)
        assert out.shape == (2, 23)


def _saved(ref, folder):
    ref.save_pretrained(folder)
    return folder


def test_left_padded_batch_decodes_each_prompt_from_its_own_state(tmp_path):
    model, _ = load_pretrained(_saved(_tiny("mamba", tied=True), tmp_path / "m"))
    prompts = [[5, 9, 2, 7, 1, 3], [4, 8], [11, 12, 13]]
    from ssmkit.pretrained.text import pad_left
    ids, mask = pad_left(prompts, pad_id=0)
    with torch.no_grad():
        logits = model(ids, mask=mask)
        out = model.generate(ids, 10, temperature=0, mask=mask)
        for i, p in enumerate(prompts):
            alone = model(torch.tensor([p]))
            torch.testing.assert_close(logits[i, -len(p):], alone[0], rtol=1e-5, atol=1e-5)
            assert torch.equal(out[i, ids.shape[1]:], model.generate(torch.tensor([p]), 10, temperature=0)[0, len(p):])


def test_named_errors(tmp_path):
    ref = _tiny("mamba", tied=True)
    good = _saved(ref, tmp_path / "good")
    cfg = json.loads((good / "config.json").read_text())

    def folder(name, config=None, weights=None):
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text(json.dumps(config if config is not None else cfg))
        if weights is not None:
            torch.save(weights, d / "pytorch_model.bin")
        return d

    sd = {k: v.clone() for k, v in ref.state_dict().items() if k != "lm_head.weight"}
    with raises_naming(PretrainedError, "model_type"):
        load_pretrained(folder("llama", dict(cfg, model_type="llama"), sd))
    missing = dict(sd)
    missing.pop("backbone.layers.1.mixer.A_log")
    with pytest.raises(PretrainedError, match=r"missing .*backbone\.layers\.1\.mixer\.A_log"):
        load_pretrained(folder("missing", weights=missing))
    with pytest.raises(PretrainedError, match=r"unexpected .*backbone\.layers\.0\.extra"):
        load_pretrained(folder("extra", weights=dict(sd, **{"backbone.layers.0.extra": torch.zeros(1)})))
    with pytest.raises(PretrainedError, match=r"backbone\.norm_f\.weight has shape \(8,\)"):
        load_pretrained(folder("shape", weights=dict(sd, **{"backbone.norm_f.weight": torch.zeros(8)})))
    with raises_naming(PretrainedError, "hidden_act"):
        load_pretrained(folder("act", dict(cfg, hidden_act="gelu"), sd))
    ms = {"d_model": 16, "n_layer": 2, "vocab_size": 40, "ssm_cfg": {"layer": "Mamba2", "D_has_hdim": True}}
    with raises_naming(PretrainedError, "ssm_cfg.D_has_hdim"):
        load_pretrained(folder("hdim", ms, sd))
    with raises_naming(PretrainedError, "d_intermediate"):
        load_pretrained(folder("mlp", dict(ms, d_intermediate=64, ssm_cfg={}), sd))
    with pytest.raises(PretrainedError, match="no weights"):
        load_pretrained(folder("empty"))
    with pytest.raises(PretrainedError, match="not a directory"):
        load_pretrained(tmp_path / "nowhere")
    d = folder("notensors")
    torch.save({"a": [1, 2]}, d / "pytorch_model.bin")
    with pytest.raises(PretrainedError, match="dict of tensors"):
        load_pretrained(d)
    with raises_naming(ValueError, "dtype"):
        load_pretrained(good, dtype="int8")
    model, _ = load_pretrained(good)
    with pytest.raises(PretrainedError, match="overwrite"):  # nothing a user wrote is replaced
        save_pretrained(model, good)


def test_tokenizer_drives_generate_model(tmp_path, capsys):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from tokenizers.decoders import WordPiece

    words = ["<pad>", "the", "cat", "sat", "on", "mat", "a", "dog"] + [f"w{i}" for i in range(V - 8)]
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    tok.pre_tokenizer = Whitespace()
    tok.decoder = WordPiece(prefix="##")  # joins words with spaces
    d = _saved(_tiny("mamba2", tied=True, ngroups=2, seed=4), tmp_path / "m")
    tok.save(str(d / "tokenizer.json"))
    model, tokenizer = load_pretrained(d)
    assert tokenizer is not None
    ids = tokenizer.encode("the cat sat").ids
    expect = model.generate(torch.tensor([ids]), 6, temperature=0)[0, 3:].tolist()
    assert main(["generate", "--model", str(d), "--prompt", "the cat sat", "--max-new-tokens", "6"]) == 0
    out = capsys.readouterr().out.strip()
    assert out == tokenizer.decode(ids + expect) and len(out.split()) == 3 + 6
    # a batch of prompts of different lengths: each row as if decoded alone
    assert main(["generate", "--model", str(d), "--prompt", "the cat sat", "--prompt", "a dog",
                 "--max-new-tokens", "6"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    alone = model.generate(torch.tensor([tokenizer.encode("a dog").ids]), 6, temperature=0)[0].tolist()
    assert lines == [f"[0] {tokenizer.decode(ids + expect)}", f"[1] {tokenizer.decode(alone)}"]
    assert main(["generate", "--model", str(d), "--prompt", "the", "--temperature", "1", "--top-p", "0.9",
                 "--top-k", "5", "--dtype", "bfloat16", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.startswith("the")
    assert main(["generate", "--model", str(tmp_path / "nope"), "--prompt", "x"]) == 2
    assert "not a directory" in capsys.readouterr().err
