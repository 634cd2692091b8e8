"""Hugging Face model folders: read an unpacked folder, build its model from config.json.

A project with architecture `huggingface` stores the folder's config.json as its
configuration. Models are built by transformers from that config alone, always with
`trust_remote_code=False`: an `auto_map` entry (code shipped with a checkpoint) is refused,
and only model classes that transformers itself defines can be named. Weights come from
`model.safetensors`, sharded safetensors with their index, or `pytorch_model.bin` (loaded
through `prunescope.models.checkpoints`, so only with `weights_only=True`).

Every model is built offline: the Hub's offline switch is set before transformers is imported
(and again on the imported library), `check_hf_config` refuses configurations that name a
repository, a backbone to download or remote code, and pretrained backbones are turned off —
a configuration from an upload never makes a network request.

Attention is always built in its "eager" implementation, so the attention probabilities are
materialised and can be captured for attention-consistency analyses.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

# The name and the error class live in the torch-free catalogue; callers also find them here.
from prunescope.models.architectures import (  # noqa: F401
    HF_ARCHITECTURE,
    HFModelError,
    check_hf_config,
    check_hf_offline,
    hf_class_name,
)
from prunescope.models.safe_json import JSONRefused, loads_bounded

# Before transformers or huggingface_hub is imported anywhere in this process: both read the
# switch once, at import (`_quiet_transformers` sets it again on an already imported hub).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

# Files that travel with a checkpoint besides its weights: what a tokenizer and a config need.
ASSET_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)
# Bookkeeping keys of config.json that say nothing about the architecture.
_BOOKKEEPING = {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "architectures"}
# A token sequence length for FLOP counts (or the model's maximum, if shorter): Transformer
# cost grows with it, so it is fixed and stated rather than guessed from data.
COST_SEQUENCE_LENGTH = 128
_MAX_CONFIG_BYTES = 1024 * 1024
_MAX_TOKENIZER_BYTES = 256 * 1024 * 1024  # tokenizer.json of a large vocabulary: tens of MB


def _quiet_transformers() -> Any:
    import huggingface_hub.constants
    import transformers
    from transformers.utils import logging as hf_logging

    huggingface_hub.constants.HF_HUB_OFFLINE = True  # in case the hub was imported before us

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    return transformers


def read_config(path: Path) -> dict[str, Any]:
    """config.json as a dict; HFModelError for missing, oversized or invalid JSON."""
    if not path.is_file():
        raise HFModelError("the folder has no config.json; upload the whole model folder")
    if path.stat().st_size > _MAX_CONFIG_BYTES:
        raise HFModelError("config.json is larger than 1 MB; it is not a model configuration")
    try:
        config = loads_bounded(path.read_bytes(), what="config.json",
                               max_bytes=_MAX_CONFIG_BYTES)
    except JSONRefused as exc:
        raise HFModelError(str(exc)) from None
    if not isinstance(config, dict):
        raise HFModelError("config.json must hold a JSON object")
    return config


def pretrained_config(config: Mapping[str, Any]) -> Any:
    """The transformers config object for a config.json dict, without any remote code."""
    config = check_hf_config(config)
    transformers = _quiet_transformers()
    model_type = config["model_type"]
    kwargs = {k: v for k, v in config.items() if k not in ("model_type", "auto_map")}
    try:
        built = transformers.AutoConfig.for_model(model_type, **kwargs)
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise HFModelError(
            f"transformers cannot build a config of type {model_type!r} ({exc}); this version "
            f"of transformers ({transformers.__version__}) may not know the model type"
        ) from None
    # Some model types default to downloading their backbone's weights (DETR: timm's
    # resnet50); a model built here takes only the uploaded weights.
    for switch in ("use_pretrained_backbone", "use_timm_backbone"):
        if getattr(built, switch, False):
            setattr(built, switch, False)
    return built


def model_class(config: Mapping[str, Any]) -> type[nn.Module]:
    """The transformers class named in `architectures`, else the model type's AutoModel.

    Only classes defined by transformers qualify: the name must be a plain identifier found in
    the transformers namespace and a `PreTrainedModel`.
    """
    name = hf_class_name(config)
    transformers = _quiet_transformers()
    if name is not None:
        cls = getattr(transformers, name, None)
        if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
            return cls
        raise HFModelError(
            f"config.json names architecture {name!r}, which transformers "
            f"{transformers.__version__} does not define; edit `architectures` to a transformers "
            "class such as BertModel, or upgrade transformers"
        )
    try:
        return transformers.AutoModel._model_mapping[type(pretrained_config(config))]
    except KeyError:
        raise HFModelError(
            f"transformers has no base model for model_type {config.get('model_type')!r}; name "
            "one in config.json's `architectures`"
        ) from None


def architecture_summary(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config's entries that define the network (everything but bookkeeping)."""
    return {k: v for k, v in config.items() if k not in _BOOKKEEPING}


def build_model(config: Mapping[str, Any]) -> nn.Module:
    """A freshly initialised model for a config.json dict (eager attention), in eval mode."""
    cls = model_class(config)
    cfg = pretrained_config(config)
    cfg._attn_implementation = "eager"
    return _annotate(cls(cfg)).eval()


def _annotate(model: nn.Module) -> nn.Module:
    """Give a transformers model the attributes registry models have (see models.registry).

    `analysis_layers` are the per-layer blocks (`encoder.layer.N` or `model.layers.N` …) that
    `output_hidden_states` also exposes; `cost_inputs` builds the token input FLOP counts use.
    """
    layers = _block_names(model)
    model.analysis_layers = tuple(layers)  # type: ignore[attr-defined]
    model.input_shape = None  # type: ignore[attr-defined]  # token ids, not a tensor shape
    limit = getattr(model.config, "max_position_embeddings", None) or COST_SEQUENCE_LENGTH
    length = min(COST_SEQUENCE_LENGTH, limit)
    model.cost_inputs = lambda: {  # type: ignore[attr-defined]
        "input_ids": torch.ones((1, length), dtype=torch.long),
        "attention_mask": torch.ones((1, length), dtype=torch.long),
    }
    return model


def _block_names(model: nn.Module) -> list[str]:
    """Names of the repeated Transformer blocks: the children of the longest ModuleList."""
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and (best is None or len(module) > len(best[1])):
            best = (name, module)
    if best is None:
        return []
    return [f"{best[0]}.{i}" for i in range(len(best[1]))]


@dataclass(frozen=True)
class LoadReport:
    missing: list[str]
    unexpected: list[str]
    mismatched: list[str]


def load_weights(
    config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]
) -> tuple[nn.Module, LoadReport]:
    """Build the model for `config` and load `state_dict` the way transformers does.

    transformers' own loader handles what strict loading cannot: a base-model prefix present
    or absent (`bert.` …), tied output embeddings, and keys its models declare ignorable
    (e.g. `position_ids` buffers). The report lists what still did not fit; the caller decides
    whether that is an error.
    """
    cls = model_class(config)
    cfg = pretrained_config(config)
    try:
        model, info = cls.from_pretrained(
            None,
            config=cfg,
            state_dict=dict(state_dict),
            output_loading_info=True,
            ignore_mismatched_sizes=True,
            attn_implementation="eager",
        )
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise HFModelError(f"the weights do not load into {cls.__name__}: {exc}") from None
    expected = model.state_dict()
    mismatched = sorted(
        f"{key} is {tuple(state_dict[key].shape)} but config.json gives "
        f"{tuple(expected[key].shape)}"
        if key in state_dict and key in expected
        else key
        for key in _mismatched_keys(info)
    )
    report = LoadReport(
        missing=sorted(info["missing_keys"]),
        unexpected=sorted(info["unexpected_keys"]),
        mismatched=mismatched,
    )
    return _annotate(model).eval(), report


def _mismatched_keys(info: Mapping[str, Any]) -> list[str]:
    # transformers reports (key, checkpoint shape, model shape) tuples or bare keys by version.
    return [m[0] if isinstance(m, tuple) else str(m) for m in info.get("mismatched_keys", ())]


@dataclass(frozen=True)
class ModelFolder:
    """An unpacked Hugging Face folder: where its config, weights and assets lie."""

    root: Path
    config: dict[str, Any]
    weight_files: list[Path]
    weight_format: str  # "safetensors" | "safetensors_sharded" | "pytorch_bin"
    asset_files: list[Path]


def find_model_folder(extracted: Path) -> ModelFolder:
    """Locate the model inside an unpacked archive: the shallowest config.json beside weights.

    sentence-transformers folders hold more than one config.json (e.g. 1_Pooling/config.json);
    the model's is the one next to the weight files.
    """
    candidates = sorted(extracted.rglob("config.json"), key=lambda p: (len(p.parts), str(p)))
    for config_path in candidates:
        root = config_path.parent
        weights = _weight_files(root)
        if weights is not None:
            files, fmt = weights
            assets = [root / n for n in ASSET_FILES if (root / n).is_file()]
            _check_json_assets(assets)
            return ModelFolder(root, read_config(config_path), files, fmt, assets)
    if not candidates:
        raise HFModelError(
            "the archive has no config.json: a Hugging Face model folder holds config.json and "
            "model.safetensors (as written by `model.save_pretrained(folder)`)"
        )
    raise HFModelError(
        "the archive has a config.json but no weights beside it: expected model.safetensors, "
        "sharded model-*.safetensors with model.safetensors.index.json, or pytorch_model.bin"
    )


def _check_json_assets(assets: list[Path]) -> None:
    """HFModelError for a tokenizer or generation JSON file that is too large, nested too
    deep (a tokenizer loader would hit RecursionError reading it in a later job) or, for
    tokenizer_config.json, names anything outside the folder."""
    for path in assets:
        if path.suffix != ".json" or path.name == "config.json":
            continue
        try:
            value = loads_bounded(path.read_bytes(), what=path.name,
                                  max_bytes=_MAX_TOKENIZER_BYTES)
        except JSONRefused as exc:
            raise HFModelError(str(exc)) from None
        if path.name == "tokenizer_config.json" and isinstance(value, dict):
            try:
                check_hf_offline(value)
            except HFModelError as exc:
                raise HFModelError(str(exc).replace("config.json", path.name, 1)) from None


def _weight_files(root: Path) -> tuple[list[Path], str] | None:
    if (root / "model.safetensors").is_file():
        return [root / "model.safetensors"], "safetensors"
    index = root / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = loads_bounded(index.read_bytes(), what="model.safetensors.index.json",
                                       max_bytes=_MAX_CONFIG_BYTES * 64)["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise HFModelError(f"model.safetensors.index.json is invalid ({exc})") from None
        paths = []
        for shard in shards:
            # Shard names come from the file: they must name files in this folder, nothing else.
            unsafe = not isinstance(shard, str) or "/" in shard or "\\" in shard
            if unsafe or shard in ("", ".", ".."):
                raise HFModelError(f"the safetensors index names an invalid shard {shard!r}")
            if not (root / shard).is_file():
                raise HFModelError(f"the safetensors index names shard {shard!r}, which is missing")
            paths.append(root / shard)
        return paths, "safetensors_sharded"
    if (root / "pytorch_model.bin").is_file():
        return [root / "pytorch_model.bin"], "pytorch_bin"
    return None


def write_assets_zip(folder: ModelFolder, dest: Path) -> None:
    """Zip the config and tokenizer files (flat names) so workers can rebuild the tokenizer."""
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in folder.asset_files:
            zf.write(path, arcname=path.name)


def config_from_assets(assets_path: str | Path) -> dict[str, Any] | None:
    """The config.json stored in a checkpoint's assets zip (written by `write_assets_zip`)."""
    with zipfile.ZipFile(assets_path) as zf:
        if "config.json" not in zf.namelist():
            return None
        return loads_bounded(zf.read("config.json"), what="config.json",
                             max_bytes=_MAX_CONFIG_BYTES)


def extract_assets(assets_path: str | Path, dest: Path) -> Path:
    """Unpack a checkpoint's assets zip (flat, written by PruneScope) for a tokenizer to read."""
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(assets_path) as zf:
        for name in zf.namelist():
            if name in ASSET_FILES:  # the zip is our own, but names are still checked
                (dest / name).write_bytes(zf.read(name))
    return dest


def has_tokenizer(folder: Path) -> bool:
    return any((folder / n).is_file() for n in ("tokenizer.json", "vocab.txt", "vocab.json"))
