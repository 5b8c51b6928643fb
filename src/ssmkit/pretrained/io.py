"""Load and save released Mamba / Mamba-2 language models from and to LOCAL folders.

Nothing is downloaded: the user fetches a checkpoint folder (docs/pretrained.md says how) and
passes its path. Weights are read from ``model.safetensors`` or ``pytorch_model.bin`` (torch
pickles with ``weights_only=True``, so a file cannot run code), sharded with an index file or
not, in any floating dtype; they are cast to the requested ``dtype``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Tuple, Union

import torch

from .._checks import check_choice
from .._io import atomic_write, atomic_write_json
from ..layers import Mamba, Mamba2
from ..models import Backbone, LanguageModel, pack_parameters
from ..ops.cpu_half import linear
from ..ops.decode_step import rows_matmul
from .formats import PretrainedError, Spec, from_ssmkit_key, spec_from_config, spec_to_config, to_ssmkit_key

__all__ = ["load_pretrained", "save_pretrained", "build_model", "model_spec", "load_tokenizer", "INFERENCE_DTYPES",
           "HalfLinear"]

INFERENCE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
                    "float64": torch.float64}
# the SSM parameters stay float32 when the rest of the model runs in half precision
_SSM_PARAMS = ("A_log", "D", "dt_bias")
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


class HalfLinear(torch.nn.Linear):
    """A linear map with half-precision weights that multiplies many rows in float32.

    On CPUs without native bfloat16 matrix units, a bfloat16 matrix product over many rows (a
    prompt) runs many times slower than float32 (here about 30x), while a few rows per token
    (decoding) gain from reading half the bytes. So: up to ``rows`` rows, the few-row product
    (:func:`ssmkit.ops.decode_step.rows_matmul`: the weight read once, accumulated in float32);
    above, the weights are widened to float32 for the call (the result in the input's
    dtype, :func:`ssmkit.ops.cpu_half.linear`)."""

    rows = 8

    def forward(self, x):
        if x.dtype == self.weight.dtype and x.dim() >= 2 and x.numel() <= self.rows * x.shape[-1]:
            y = rows_matmul(x.reshape(-1, x.shape[-1]), self.weight, self.bias)
            if y is not None:
                return y.reshape(*x.shape[:-1], y.shape[-1])
        return linear(x, self.weight, self.bias)  # many rows in half precision on the CPU: in float32


def _dtype(dtype) -> torch.dtype:
    if isinstance(dtype, str):
        check_choice("dtype", dtype, INFERENCE_DTYPES)
        return INFERENCE_DTYPES[dtype]
    if dtype not in INFERENCE_DTYPES.values():
        raise TypeError(f"dtype must be one of {', '.join(INFERENCE_DTYPES)}, got {dtype!r}")
    return dtype


def build_model(spec: Spec, dtype: torch.dtype = torch.float32, device=None) -> LanguageModel:
    """The ssmkit ``LanguageModel`` that ``spec`` describes (random initial weights)."""
    backbone = Backbone(spec.d_model, spec.n_layers, spec.layer, spec.layer_kwargs, vocab_size=spec.vocab_size,
                        norm=spec.norm, norm_eps=spec.norm_eps, residual_in_fp32=spec.residual_in_fp32,
                        pad_vocab_size_multiple=spec.pad_vocab_size_multiple, device=device, dtype=dtype)
    model = LanguageModel(backbone, tie_embeddings=spec.tie_embeddings, head_bias=False, device=device, dtype=dtype)
    model.spec = spec
    return model


def model_spec(model: LanguageModel) -> Spec:
    """The ``Spec`` of an ssmkit language model built of Mamba or Mamba-2 layers (for saving)."""
    if not isinstance(model, LanguageModel):
        raise TypeError(f"model must be a LanguageModel, got {type(model).__name__}")
    bb = model.backbone
    if bb.layer_name not in ("mamba", "mamba2") or bb.vocab_size is None:
        raise PretrainedError(f"only token models of Mamba or Mamba-2 layers can be saved in a pretrained layout, "
                              f"got layer {bb.layer_name!r}")
    if model.head.bias is not None:
        raise PretrainedError("unsupported option head_bias=True: the released layouts have an LM head without bias")
    if not bb.prenorm or bb.norm_kind not in ("rms", "layer"):
        raise PretrainedError(f"unsupported backbone norm {bb.norm_kind!r} (prenorm={bb.prenorm}): the released "
                              "layouts are pre-norm with RMSNorm or LayerNorm")
    if any(not isinstance(b.mixer, torch.nn.Identity) for b in bb.blocks):
        raise PretrainedError("unsupported option: a channel mixer after the layer")
    lay = bb.blocks[0].layer
    if isinstance(lay, Mamba):
        if (lay.in_proj.bias is None) != (lay.out_proj.bias is None):
            raise PretrainedError("unsupported option: in_proj and out_proj must both have a bias or both not")
        kw = dict(d_state=lay.d_state, d_conv=lay.d_conv, expand=lay.d_inner // lay.d_model, dt_rank=lay.dt_rank,
                  bias=lay.in_proj.bias is not None, conv_bias=lay.conv1d.bias is not None)
    else:
        assert isinstance(lay, Mamba2)
        kw = dict(d_state=lay.d_state, d_conv=lay.d_conv, expand=lay.d_inner // lay.d_model, headdim=lay.headdim,
                  ngroups=lay.ngroups, chunk_size=lay.chunk_size, bias=lay.in_proj.bias is not None,
                  conv_bias=lay.conv1d.bias is not None, dt_limit=tuple(lay.dt_limit), norm_eps=lay.norm.eps,
                  norm_before_gate=lay.norm.norm_before_gate)
    old = getattr(model, "spec", None)
    spec = Spec(layer=bb.layer_name, d_model=bb.d_model, n_layers=len(bb.blocks), vocab_size=bb.vocab_size,
                pad_vocab_size_multiple=bb.pad_vocab_size_multiple, norm=bb.norm_kind, norm_eps=bb.norm_eps,
                residual_in_fp32=bb.residual_in_fp32, tie_embeddings=model.tie_embeddings, layer_kwargs=kw)
    if old is not None:
        spec.bos_token_id, spec.eos_token_id, spec.pad_token_id = old.bos_token_id, old.eos_token_id, old.pad_token_id
    return spec


# --- reading ---------------------------------------------------------------------------------
def _read_config(folder: Path) -> Dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise PretrainedError(f"{folder} has no config.json (expected a transformers or mamba_ssm checkpoint folder)")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PretrainedError(f"{path} is not valid JSON: {e}") from None


def _load_file(path: Path) -> Dict[str, torch.Tensor]:
    if not path.is_file():
        raise PretrainedError(f"weight file {path} is missing")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(path), device="cpu")
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except PretrainedError:
        raise
    except Exception as e:  # a truncated or foreign file, or a pickle that is not plain tensors
        raise PretrainedError(f"cannot read weights from {path}: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise PretrainedError(f"{path} does not hold a dict of tensors (a state dict)")
    return obj


def _read_weights(folder: Path) -> Dict[str, torch.Tensor]:
    for name in _WEIGHT_FILES:
        path = folder / name
        if not path.is_file():
            continue
        if not name.endswith(".index.json"):
            return _load_file(path)
        try:
            weight_map = json.loads(path.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise PretrainedError(f"{path} is not a valid index (a JSON object with a 'weight_map'): {e}") from None
        tensors: Dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            tensors.update(_load_file(folder / shard))
        return tensors
    raise PretrainedError(f"{folder} has no weights: expected one of {', '.join(_WEIGHT_FILES)}")


def load_tokenizer(folder: Union[str, os.PathLike]):
    """The folder's ``tokenizer.json`` through the ``tokenizers`` package, or None if absent."""
    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        return None
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise ImportError("reading tokenizer.json needs the 'tokenizers' package: pip install 'ssmkit[text]'") from None
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:
        raise PretrainedError(f"cannot read {path}: {str(e).splitlines()[0][:200]}") from None


def _names(keys, layout, limit=3) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" (and {len(keys) - limit} more)" if len(keys) > limit else "")


def load_pretrained(path: Union[str, os.PathLike], dtype="float32", device=None,
                    tokenizer: bool = True) -> Tuple[LanguageModel, Any]:
    """Load a Mamba or Mamba-2 language model from a LOCAL checkpoint folder.

    Returns ``(model, tokenizer)``: an ssmkit :class:`~ssmkit.models.LanguageModel` in eval mode,
    in ``dtype`` (``float32``, ``bfloat16``, ...; the SSM parameters ``A_log``, ``D``,
    ``dt_bias`` and the recurrent state stay float32), and a ``tokenizers.Tokenizer`` when the
    folder has ``tokenizer.json`` (else None). Raises :class:`PretrainedError` (a ValueError)
    naming the cause: unknown model type, unsupported option, missing or unexpected parameter,
    shape mismatch.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise PretrainedError(f"path must be a local checkpoint folder, got {str(path)!r} (not a directory)")
    dtype = _dtype(dtype)
    layout, spec = spec_from_config(_read_config(folder))
    raw = _read_weights(folder)
    with torch.device("meta"):
        model = build_model(spec, dtype=dtype)
    expected = model.state_dict()
    if spec.tie_embeddings:
        expected.pop("head.weight")
    state, unexpected = {}, []
    for k, v in raw.items():
        ours = to_ssmkit_key(k, layout)
        if ours is None or (ours not in expected and not (ours == "head.weight" and spec.tie_embeddings)):
            unexpected.append(k)
        elif ours in expected:
            state[ours] = v
    if unexpected:
        raise PretrainedError(f"unexpected parameters in the checkpoint: {_names(unexpected, layout)}")
    missing = [from_ssmkit_key(k, layout) for k in expected if k not in state]
    if missing:
        raise PretrainedError(f"missing parameters in the checkpoint: {_names(missing, layout)}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise PretrainedError(f"parameter {from_ssmkit_key(k, layout)} has shape {tuple(v.shape)} in the checkpoint, "
                                  f"expected {tuple(expected[k].shape)} from config.json")
        if not v.is_floating_point():
            raise PretrainedError(f"parameter {from_ssmkit_key(k, layout)} has dtype {v.dtype}, expected floating point")
    model = model.to_empty(device=device or "cpu")
    if spec.tie_embeddings:
        model.head.weight = model.backbone.encoder.weight
    pack_parameters(model, copy_values=False)  # CPU: one huge-page block, in reading order (decode speed)
    half = dtype in (torch.float16, torch.bfloat16)
    params = dict(model.named_parameters(remove_duplicate=False))
    with torch.no_grad():
        for k, v in state.items():
            target = params.get(k)
            if target is None:  # a buffer (BatchNorm statistics are not used by these models)
                continue
            if half and k.rsplit(".", 1)[-1] in _SSM_PARAMS:
                params[k] = torch.nn.Parameter(v.to(device=target.device, dtype=torch.float32))
                _set(model, k, params[k])
            else:
                target.copy_(v)
    if half:  # long prompts multiply in float32 (see HalfLinear); state dict and names unchanged
        for m in model.modules():
            if type(m) is torch.nn.Linear:
                m.__class__ = HalfLinear
    model.eval()
    return model, (load_tokenizer(folder) if tokenizer else None)


def _set(model, key, param):
    mod_name, _, name = key.rpartition(".")
    setattr(model.get_submodule(mod_name), name, param)


# --- writing ---------------------------------------------------------------------------------
def save_pretrained(model: LanguageModel, path: Union[str, os.PathLike], layout: str = "transformers",
                    overwrite: bool = False, dtype=None) -> Path:
    """Write ``model`` to the folder ``path`` in ``layout``:

    - ``transformers``: config.json + model.safetensors, loadable by ``MambaForCausalLM`` /
      ``Mamba2ForCausalLM.from_pretrained(path)`` with the same logits;
    - ``mamba_ssm``: config.json + pytorch_model.bin for ``MambaLMHeadModel``.

    Weights are written in their dtype, or ``dtype`` if given. An existing config or weight
    file is never replaced unless ``overwrite``; files are written atomically."""
    check_choice("layout", layout, ("transformers", "mamba_ssm"))
    spec = model_spec(model)
    config = spec_to_config(spec, layout, model.backbone.padded_vocab_size)
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise PretrainedError(f"path {str(path)!r} exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    weights = "model.safetensors" if layout == "transformers" else "pytorch_model.bin"
    if not overwrite:
        clash = [n for n in ("config.json",) + _WEIGHT_FILES if (folder / n).exists()]
        if clash:
            raise PretrainedError(f"{folder} already holds {', '.join(clash)}; pass overwrite=True to replace them")
    out_dtype = None if dtype is None else _dtype(dtype)
    tensors = {}
    for k, v in model.state_dict().items():
        if layout == "transformers" and spec.tie_embeddings and k == "head.weight":
            continue  # tied: transformers stores the embedding once
        if "num_batches_tracked" in k or "running_" in k:
            continue
        v = v.detach().to("cpu")
        if out_dtype is not None:
            v = v.to(out_dtype)
        tensors[from_ssmkit_key(k, layout)] = v.contiguous().clone()
    if layout == "transformers":
        from safetensors.torch import save
        atomic_write(folder / weights, save(tensors, metadata={"format": "pt"}))
    else:
        atomic_write(folder / weights, lambda fh: torch.save(tensors, fh))
    atomic_write_json(folder / "config.json", config)
    return folder
