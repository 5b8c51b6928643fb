"""Released Mamba and Mamba-2 language models on the CPU: load and save the transformers and
mamba_ssm checkpoint layouts from and to LOCAL folders (docs/pretrained.md).

    model, tokenizer = load_pretrained("path/to/mamba-130m-hf")
    save_pretrained(model, "out", layout="transformers")
"""
from .formats import PretrainedError, Spec, spec_from_config, spec_to_config
from .io import INFERENCE_DTYPES, build_model, load_pretrained, load_tokenizer, model_spec, save_pretrained

__all__ = ["load_pretrained", "save_pretrained", "load_tokenizer", "build_model", "model_spec", "PretrainedError",
           "Spec", "spec_from_config", "spec_to_config", "INFERENCE_DTYPES"]
