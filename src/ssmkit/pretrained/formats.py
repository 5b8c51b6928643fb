"""The two checkpoint layouts of released Mamba / Mamba-2 language models, and their mapping to
ssmkit's ``LanguageModel``.

- transformers: ``config.json`` with ``model_type`` ``mamba`` or ``mamba2`` (classes
  ``MambaForCausalLM`` / ``Mamba2ForCausalLM``), parameter names ``backbone.embeddings``,
  ``backbone.layers.N.{norm,mixer}``, ``backbone.norm_f``, ``lm_head``; the vocabulary in the
  config is already padded.
- mamba_ssm: ``config.json`` with ``d_model``, ``n_layer``, ``vocab_size``, ``ssm_cfg``
  (``layer``: ``Mamba1`` or ``Mamba2``), ``rms_norm``, ``residual_in_fp32``,
  ``pad_vocab_size_multiple``, ``tie_embeddings`` (class ``MambaLMHeadModel``); parameter names
  ``backbone.embedding``, ``backbone.layers.N.{norm,mixer}``, ``backbone.norm_f``, ``lm_head``.

The mixer parameters have the same names in both layouts and in ssmkit's ``Mamba`` /
``Mamba2``. ``Spec`` is the layout-independent description that builds the ssmkit model.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

__all__ = ["PretrainedError", "Spec", "spec_from_config", "spec_to_config", "to_ssmkit_key", "from_ssmkit_key"]


class PretrainedError(ValueError):
    """A checkpoint folder that ssmkit cannot load as asked (one line naming the cause)."""


@dataclass
class Spec:
    """What ssmkit needs to rebuild a released Mamba / Mamba-2 language model."""

    layer: str  # "mamba" or "mamba2"
    d_model: int
    n_layers: int
    vocab_size: int  # as the checkpoint states it (before padding)
    pad_vocab_size_multiple: int = 1
    norm: str = "rms"
    norm_eps: float = 1e-5
    residual_in_fp32: bool = True
    tie_embeddings: bool = True
    layer_kwargs: Dict[str, Any] = field(default_factory=dict)
    bos_token_id: Optional[int] = None
    eos_token_id: Optional[int] = None
    pad_token_id: Optional[int] = None


def _unsupported(name: str, value, why: str) -> PretrainedError:
    return PretrainedError(f"unsupported option {name}={value!r} in config.json: {why}")


def _get(cfg: Dict[str, Any], key: str, default=None, *, required: bool = False):
    if key not in cfg or cfg[key] is None:
        if required:
            raise PretrainedError(f"config.json lacks the required entry {key!r}")
        return default
    return cfg[key]


def _int(cfg, key, default=None, required=False) -> int:
    v = _get(cfg, key, default, required=required)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v or v < 1:
        raise PretrainedError(f"config.json entry {key!r} must be a positive integer, got {v!r}")
    return int(v)


def _bool(cfg, key, default) -> bool:
    v = _get(cfg, key, default)
    if not isinstance(v, bool):
        raise PretrainedError(f"config.json entry {key!r} must be true or false, got {v!r}")
    return v


def _float(cfg, key, default) -> float:
    v = _get(cfg, key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise PretrainedError(f"config.json entry {key!r} must be a positive number, got {v!r}")
    return float(v)


def _dt_limit(v, key) -> tuple:
    if v is None:
        return (0.0, float("inf"))
    if not isinstance(v, (list, tuple)) or len(v) != 2:
        raise PretrainedError(f"config.json entry {key!r} must be a [min, max] pair, got {v!r}")
    try:  # transformers may write infinity as {"__float__": "Infinity"}
        lo, hi = (float(x["__float__"] if isinstance(x, dict) and "__float__" in x else x) for x in v)
    except (TypeError, ValueError):
        raise PretrainedError(f"config.json entry {key!r} must be a [min, max] pair of numbers, got {v!r}") from None
    if not 0.0 <= lo < hi:
        raise PretrainedError(f"config.json entry {key!r} must have 0 <= min < max, got {v!r}")
    return (lo, hi)


def _act(cfg):
    act = _get(cfg, "hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise _unsupported("hidden_act", act, "the Mamba blocks use SiLU")


def _token_ids(cfg, spec: Spec) -> Spec:
    for k in ("bos_token_id", "eos_token_id", "pad_token_id"):
        v = cfg.get(k)
        if isinstance(v, list):
            v = v[0] if v else None
        setattr(spec, k, v if isinstance(v, int) and not isinstance(v, bool) else None)
    return spec


def _from_transformers(cfg: Dict[str, Any]) -> Spec:
    mt = cfg["model_type"]
    _act(cfg)
    d_model = _int(cfg, "hidden_size", required=True)
    common = dict(d_model=d_model, n_layers=_int(cfg, "num_hidden_layers", required=True),
                  vocab_size=_int(cfg, "vocab_size", required=True), norm="rms",
                  norm_eps=_float(cfg, "layer_norm_epsilon", 1e-5),
                  residual_in_fp32=_bool(cfg, "residual_in_fp32", True),
                  tie_embeddings=_bool(cfg, "tie_word_embeddings", mt == "mamba"))
    expand = _int(cfg, "expand", 2)
    if mt == "mamba":
        rank = _get(cfg, "time_step_rank", "auto")
        rank = math.ceil(d_model / 16) if rank == "auto" else rank
        kw = dict(d_state=_int(cfg, "state_size", 16), d_conv=_int(cfg, "conv_kernel", 4), expand=expand,
                  dt_rank=_int({"time_step_rank": rank}, "time_step_rank"), bias=_bool(cfg, "use_bias", False),
                  conv_bias=_bool(cfg, "use_conv_bias", True))
        inter = cfg.get("intermediate_size")
        if inter is not None and inter != expand * d_model:
            raise _unsupported("intermediate_size", inter, f"expected expand*hidden_size = {expand * d_model}")
        return _token_ids(cfg, Spec(layer="mamba", layer_kwargs=kw, **common))
    headdim = _int(cfg, "head_dim", 64)
    heads = _int(cfg, "num_heads", expand * d_model // headdim)
    if heads * headdim != expand * d_model:
        raise _unsupported("num_heads", heads, f"num_heads*head_dim must equal expand*hidden_size = {expand * d_model}")
    if cfg.get("rms_norm", True) is not True:
        raise _unsupported("rms_norm", cfg.get("rms_norm"), "only the gated RMSNorm variant is implemented")
    kw = dict(d_state=_int(cfg, "state_size", 128), d_conv=_int(cfg, "conv_kernel", 4), expand=expand,
              headdim=headdim, ngroups=_int(cfg, "n_groups", 8), chunk_size=_int(cfg, "chunk_size", 256),
              bias=_bool(cfg, "use_bias", False), conv_bias=_bool(cfg, "use_conv_bias", True),
              dt_limit=_dt_limit(cfg.get("time_step_limit"), "time_step_limit"),
              norm_eps=common["norm_eps"], norm_before_gate=False)
    return _token_ids(cfg, Spec(layer="mamba2", layer_kwargs=kw, **common))


_MAMBA1_KEYS = {"d_state", "d_conv", "expand", "dt_rank", "dt_min", "dt_max", "dt_init", "dt_scale",
                "dt_init_floor", "conv_bias", "bias", "use_fast_path", "layer"}
_MAMBA2_KEYS = {"d_state", "d_conv", "conv_init", "expand", "headdim", "d_ssm", "ngroups", "A_init_range",
                "D_has_hdim", "rmsnorm", "norm_before_gate", "dt_min", "dt_max", "dt_init_floor", "dt_limit", "bias",
                "conv_bias", "chunk_size", "use_mem_eff_path", "layer", "process_group", "sequence_parallel"}


def _from_mamba_ssm(cfg: Dict[str, Any]) -> Spec:
    d_model = _int(cfg, "d_model", required=True)
    if _get(cfg, "d_intermediate", 0):
        raise _unsupported("d_intermediate", cfg["d_intermediate"], "blocks with an MLP are not implemented")
    if _get(cfg, "attn_layer_idx", []):
        raise _unsupported("attn_layer_idx", cfg["attn_layer_idx"], "attention layers are not implemented")
    ssm = dict(_get(cfg, "ssm_cfg", {}) or {})
    kind = ssm.get("layer", "Mamba1")
    if kind not in ("Mamba1", "Mamba2"):
        raise _unsupported("ssm_cfg.layer", kind, "expected 'Mamba1' or 'Mamba2'")
    known = _MAMBA1_KEYS if kind == "Mamba1" else _MAMBA2_KEYS
    extra = sorted(set(ssm) - known)
    if extra:
        raise _unsupported(f"ssm_cfg.{extra[0]}", ssm[extra[0]], f"not a known {kind} option")
    common = dict(d_model=d_model, n_layers=_int(cfg, "n_layer", required=True),
                  vocab_size=_int(cfg, "vocab_size", required=True),
                  pad_vocab_size_multiple=_int(cfg, "pad_vocab_size_multiple", 8),
                  norm="rms" if _bool(cfg, "rms_norm", True) else "layer", norm_eps=_float(cfg, "norm_epsilon", 1e-5),
                  residual_in_fp32=_bool(cfg, "residual_in_fp32", True), tie_embeddings=_bool(cfg, "tie_embeddings", True))
    expand = _int(ssm, "expand", 2)
    if kind == "Mamba1":
        kw = dict(d_state=_int(ssm, "d_state", 16), d_conv=_int(ssm, "d_conv", 4), expand=expand,
                  dt_rank=math.ceil(d_model / 16) if ssm.get("dt_rank", "auto") == "auto" else _int(ssm, "dt_rank"),
                  bias=_bool(ssm, "bias", False), conv_bias=_bool(ssm, "conv_bias", True))
        return Spec(layer="mamba", layer_kwargs=kw, **common)
    d_inner = expand * d_model
    if ssm.get("d_ssm") not in (None, d_inner):
        raise _unsupported("ssm_cfg.d_ssm", ssm["d_ssm"], f"only d_ssm = d_inner = {d_inner} (no gated MLP part) is implemented")
    if ssm.get("D_has_hdim", False):
        raise _unsupported("ssm_cfg.D_has_hdim", True, "D is one value per head here")
    if not ssm.get("rmsnorm", True):
        raise _unsupported("ssm_cfg.rmsnorm", False, "only the gated RMSNorm variant is implemented")
    kw = dict(d_state=_int(ssm, "d_state", 128), d_conv=_int(ssm, "d_conv", 4), expand=expand,
              headdim=_int(ssm, "headdim", 64), ngroups=_int(ssm, "ngroups", 1), chunk_size=_int(ssm, "chunk_size", 256),
              bias=_bool(ssm, "bias", False), conv_bias=_bool(ssm, "conv_bias", True),
              dt_limit=_dt_limit(ssm.get("dt_limit"), "ssm_cfg.dt_limit"), norm_eps=1e-5,
              norm_before_gate=_bool(ssm, "norm_before_gate", False))
    return Spec(layer="mamba2", layer_kwargs=kw, **common)


def spec_from_config(cfg: Dict[str, Any]) -> tuple:
    """``(layout, Spec)`` from a parsed config.json; ``layout`` is ``transformers`` or ``mamba_ssm``."""
    if not isinstance(cfg, dict):
        raise PretrainedError(f"config.json must hold a JSON object, got {type(cfg).__name__}")
    if "model_type" in cfg:
        mt = cfg["model_type"]
        if mt not in ("mamba", "mamba2"):
            raise PretrainedError(f"unknown model_type {mt!r} in config.json; expected 'mamba' or 'mamba2' "
                                  "(MambaForCausalLM, Mamba2ForCausalLM)")
        return "transformers", _from_transformers(cfg)
    if "d_model" in cfg and "n_layer" in cfg:
        return "mamba_ssm", _from_mamba_ssm(cfg)
    raise PretrainedError("config.json is neither a transformers config (model_type 'mamba'/'mamba2') nor a "
                          "mamba_ssm config (d_model, n_layer, ssm_cfg, ...)")


def spec_to_config(spec: Spec, layout: str, padded_vocab: int) -> Dict[str, Any]:
    """The config.json of ``spec`` in ``layout`` (``transformers`` or ``mamba_ssm``)."""
    kw = spec.layer_kwargs
    if layout == "mamba_ssm":
        if spec.layer == "mamba":
            ssm = dict(layer="Mamba1", d_state=kw["d_state"], d_conv=kw["d_conv"], expand=kw["expand"],
                       dt_rank=kw["dt_rank"], bias=kw["bias"], conv_bias=kw["conv_bias"])
        else:
            if kw["norm_eps"] != 1e-5:
                raise _unsupported("norm_eps", kw["norm_eps"], "mamba_ssm's Mamba2 fixes the gated-norm epsilon at 1e-5")
            ssm = dict(layer="Mamba2", d_state=kw["d_state"], d_conv=kw["d_conv"], expand=kw["expand"],
                       headdim=kw["headdim"], ngroups=kw["ngroups"], chunk_size=kw["chunk_size"], bias=kw["bias"],
                       conv_bias=kw["conv_bias"], dt_limit=list(kw["dt_limit"]), norm_before_gate=kw["norm_before_gate"])
        return dict(d_model=spec.d_model, d_intermediate=0, n_layer=spec.n_layers, vocab_size=spec.vocab_size,
                    ssm_cfg=ssm, attn_layer_idx=[], attn_cfg={}, rms_norm=spec.norm == "rms",
                    norm_epsilon=spec.norm_eps, residual_in_fp32=spec.residual_in_fp32, fused_add_norm=True,
                    pad_vocab_size_multiple=spec.pad_vocab_size_multiple, tie_embeddings=spec.tie_embeddings)
    if spec.norm != "rms":
        raise _unsupported("norm", spec.norm, "transformers' Mamba models use RMSNorm")
    cfg = dict(hidden_size=spec.d_model, num_hidden_layers=spec.n_layers, vocab_size=padded_vocab,
               layer_norm_epsilon=spec.norm_eps, residual_in_fp32=spec.residual_in_fp32,
               tie_word_embeddings=spec.tie_embeddings, hidden_act="silu", expand=kw["expand"],
               state_size=kw["d_state"], conv_kernel=kw["d_conv"], use_bias=kw["bias"], use_conv_bias=kw["conv_bias"])
    for k in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(spec, k) is not None:
            cfg[k] = getattr(spec, k)
    if spec.layer == "mamba":
        cfg.update(model_type="mamba", architectures=["MambaForCausalLM"], time_step_rank=kw["dt_rank"],
                   intermediate_size=kw["expand"] * spec.d_model)
        return cfg
    if kw["norm_before_gate"]:
        raise _unsupported("norm_before_gate", True, "transformers' Mamba2 applies the gate before the norm")
    if kw["norm_eps"] != spec.norm_eps:
        raise _unsupported("norm_eps", kw["norm_eps"], "transformers' Mamba2 uses one epsilon (layer_norm_epsilon) "
                                                        f"for every norm, here {spec.norm_eps}")
    d_inner = kw["expand"] * spec.d_model
    lo, hi = kw["dt_limit"]
    cfg.update(model_type="mamba2", architectures=["Mamba2ForCausalLM"], head_dim=kw["headdim"],
               num_heads=d_inner // kw["headdim"], n_groups=kw["ngroups"], chunk_size=kw["chunk_size"],
               time_step_limit=[lo, hi])
    return cfg


# --- parameter names -----------------------------------------------------------------------
def _name_pairs(layout: str):
    """(checkpoint pattern, ssmkit pattern) pairs; ``{i}`` is a layer index, ``{rest}`` the remainder."""
    embed = "backbone.embeddings" if layout == "transformers" else "backbone.embedding"
    return ((embed + ".{rest}", "backbone.encoder.{rest}"),
            ("backbone.layers.{i}.norm.{rest}", "backbone.blocks.{i}.norm.{rest}"),
            ("backbone.layers.{i}.mixer.{rest}", "backbone.blocks.{i}.layer.{rest}"),
            ("backbone.norm_f.{rest}", "backbone.norm.{rest}"),
            ("lm_head.{rest}", "head.{rest}"))


def _rename(key: str, pairs, src: int) -> Optional[str]:
    for pair in pairs:
        pattern = re.escape(pair[src]).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{rest\}", r"(?P<rest>.+)")
        m = re.fullmatch(pattern, key)
        if m:
            return pair[1 - src].format(**m.groupdict())
    return None


def to_ssmkit_key(key: str, layout: str) -> Optional[str]:
    """A checkpoint parameter name -> ssmkit's name (None when it has no counterpart)."""
    return _rename(key, _name_pairs(layout), 0)


def from_ssmkit_key(key: str, layout: str) -> str:
    """ssmkit's parameter name -> the checkpoint's."""
    name = _rename(key, _name_pairs(layout), 1)
    if name is None:
        raise PretrainedError(f"parameter {key!r} has no counterpart in the {layout} layout")
    return name
