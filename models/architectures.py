"""What each architecture is and needs, without torch: names, configs, defaults, the input a dataset
must match and the model's size.

The web server validates a project's architecture and fits builtin datasets to it from here, so
it never imports torch or transformers; `prunescope.models.registry` builds the networks under the
same names (`prunescope.models.registration.register` keeps the two tables in step, and a test
checks they agree).

`huggingface` is a name with an empty default: its configuration is a config.json dict, which the
first uploaded model folder provides. Only the checks that need no transformers are made on it
here; the rest (a model type transformers knows, a class it defines) when a model is built.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prunescope.models.configs import (
    MAX_CLASSES,
    CNNSmallConfig,
    MLPConfig,
    ResNet18Config,
    ResNet20Config,
    ViTSmallConfig,
    check_size_limits,
)
from prunescope.models.safe_json import MAX_JSON_DEPTH, json_depth

HF_ARCHITECTURE = "huggingface"

# name → config dataclass; the network registered under the name takes it as `config_class`.
ARCHITECTURE_CONFIGS: dict[str, type] = {
    "mlp": MLPConfig,
    "cnn_small": CNNSmallConfig,
    "resnet20": ResNet20Config,
    "resnet18": ResNet18Config,
    "vit_small": ViTSmallConfig,
}


class UnknownArchitectureError(ValueError):
    """An architecture name that is not registered; the message lists the known names."""


class HFModelError(ValueError):
    """A Hugging Face folder or config that cannot be used; the message is meant for the user."""


class ModelTooLarge(ValueError):
    """A configuration whose model has more parameters than allowed; the message says so."""


@dataclass(frozen=True)
class ModelInput:
    """What a model reads ("tensor" of `input_shape`, or "text") and how many classes it has.

    `num_outputs` is None for a text model without a classification head (an encoder whose
    representations are compared, not its predictions).
    """

    kind: str
    input_shape: tuple[int, ...] | None
    num_outputs: int | None


def list_architectures() -> list[str]:
    """Registered architecture names and `huggingface` (any model built from config.json)."""
    return sorted([*ARCHITECTURE_CONFIGS, HF_ARCHITECTURE])


def config_class(name: str) -> type:
    """The config dataclass of a registry architecture; UnknownArchitectureError otherwise."""
    try:
        return ARCHITECTURE_CONFIGS[name]
    except KeyError:
        raise UnknownArchitectureError(
            f"unknown architecture {name!r}; choose one of {', '.join(list_architectures())}"
        ) from None


def default_config(name: str) -> dict[str, Any]:
    """The architecture's default configuration as JSON-able values (tuples become lists).

    Lists rather than tuples so the dict compares equal after a round trip through JSON,
    which is how projects store it. A `huggingface` project's config is its config.json,
    which the first uploaded folder provides, so its default is empty.
    """
    if name == HF_ARCHITECTURE:
        return {}
    config = config_class(name)()
    return {
        f.name: list(v) if isinstance(v := getattr(config, f.name), tuple) else v
        for f in dataclasses.fields(config)
    }


def build_config(name: str, **config: Any) -> Any:
    """The architecture's config dataclass from keyword values, validated; missing keys take
    their defaults.

    Raises ValueError naming unknown keys or bad values. For `huggingface` it is the config.json
    dict itself, after `check_hf_config`.
    """
    if name == HF_ARCHITECTURE:
        return check_hf_config(config)
    cls = config_class(name)
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(config) - set(known))
    if unknown:
        raise ValueError(
            f"unknown configuration key(s) {', '.join(map(repr, unknown))} for {name}; "
            f"known keys: {', '.join(known)}"
        )
    return cls(**config)


# ------------------------------------------------------------------------- what a model reads


def expected_input(name: str, config: Mapping[str, Any]) -> ModelInput:
    """What the model `create_model(name, **config)` would read and output, from the config.

    Registry networks read tensors of their config's `input_shape` and output `num_classes`
    scores. A Hugging Face model reads text; it has `num_labels` outputs when config.json names
    a `…ForSequenceClassification` class and no class scores otherwise (also while a
    `huggingface` project has no config yet). Raises ValueError for a bad config.
    """
    if name == HF_ARCHITECTURE:
        if not config:  # no model yet: its first checkpoint brings config.json
            return ModelInput("text", None, None)
        config = check_hf_config(config)
        head = hf_class_name(config)
        if head is not None and head.endswith("ForSequenceClassification"):
            return ModelInput("text", None, hf_num_labels(config))
        return ModelInput("text", None, None)
    built = build_config(name, **config)
    return ModelInput("tensor", tuple(built.input_shape), int(built.num_classes))


# ------------------------------------------------------------------------------ model size

# config.json keys that hold a Transformer's sizes, by the names different model types use.
_HF_WIDTH_KEYS = ("hidden_size", "d_model", "n_embd", "dim")
_HF_DEPTH_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
_HF_FFN_KEYS = ("intermediate_size", "n_inner", "d_ff", "ffn_dim", "hidden_dim")


def parameter_count(name: str, config: Mapping[str, Any]) -> int:
    """How many parameters the model built from `config` has, without building it.

    Exact for the registry networks (their config's `parameter_count()`). For `huggingface`
    the many model types cannot be counted exactly without transformers, so this is an
    estimate from the dimensions config.json declares: token embeddings (vocab × width) and,
    per layer, attention (4 × width²) and the feed-forward block (2 × width × its width,
    4 × width when not given); biases, norms and heads are left out. 0 for an empty config.
    Raises ValueError for a bad config.
    """
    if name == HF_ARCHITECTURE:
        if not config:
            return 0
        width = _hf_size(config, _HF_WIDTH_KEYS)
        depth = _hf_size(config, _HF_DEPTH_KEYS)
        ffn = _hf_size(config, _HF_FFN_KEYS) or 4 * width
        vocab = _hf_size(config, ("vocab_size",))
        return vocab * width + depth * (4 * width * width + 2 * width * ffn)
    return int(build_config(name, **config).parameter_count())


def check_model_size(name: str, config: Mapping[str, Any], max_parameters: int) -> int:
    """The parameter count of the model `config` describes, once it is within bounds:
    ModelTooLarge past `max_parameters` (PRUNESCOPE_MAX_MODEL_PARAMETERS), then ValueError for
    any size past its own upper bound (`prunescope.models.configs.SIZE_LIMITS`; a Hugging Face
    config's sizes are bounded by `check_hf_config`). Nothing is built."""
    count = parameter_count(name, config)
    if count > max_parameters:
        counted = ("about {:,} parameters (estimated from config.json's sizes)"
                   if name == HF_ARCHITECTURE else "{:,} parameters")
        raise ModelTooLarge(
            f"the model would have {counted.format(count)}, more than the limit of "
            f"{max_parameters:,}; choose smaller sizes, or raise PRUNESCOPE_MAX_MODEL_PARAMETERS "
            "if a model this large is expected"
        )
    if name != HF_ARCHITECTURE:
        check_size_limits(name, build_config(name, **config))
    return count


def _hf_size(config: Mapping[str, Any], keys: tuple[str, ...]) -> int:
    """The first of `keys` holding a positive integer; 0 if none does."""
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return 0


# ----------------------------------------------------------------------- Hugging Face configs

_CLASS_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def check_hf_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """config.json as a dict after the checks that need no transformers: no remote code
    (`auto_map`), a `model_type`, and a plain class name in `architectures`; HFModelError
    (a ValueError meant for the user) otherwise."""
    if not isinstance(config, Mapping):
        raise HFModelError("config.json must hold a JSON object")
    depth = json_depth(dict(config))
    if depth > MAX_JSON_DEPTH:
        raise HFModelError(f"config.json nests {depth} levels deep, more than the "
                           f"{MAX_JSON_DEPTH} any real configuration needs")
    if "auto_map" in config:
        raise HFModelError(
            "config.json has an `auto_map`: the model needs code shipped with the checkpoint, "
            "which PruneScope never runs (trust_remote_code=False). Use a model type that "
            "transformers implements"
        )
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise HFModelError("config.json has no `model_type`; it is not a Hugging Face config")
    hf_class_name(config)
    check_hf_offline(config)
    _check_hf_sizes(config)
    return dict(config)


# Keys whose string value names something to fetch: another repository on the Hub, a timm
# model, a URL. transformers resolves some of them while building a model (a `backbone` is
# loaded with `AutoBackbone.from_pretrained`), so they are refused rather than left to the
# offline switch. `_name_or_path` (`name_or_path` in tokenizer_config.json) is the exception:
# bookkeeping that save_pretrained writes and that building from a config never reads.
_REFERENCE_KEY = re.compile(
    r"(?:^|_)(?:backbone|name_or_path|repo|repo_id|model_id|checkpoint|url|hub)$|^auto_map$"
    r"|^custom_pipelines$"
)
_FETCHING_FLAGS = ("trust_remote_code", "use_pretrained_backbone")
_BOOKKEEPING_NAMES = ("_name_or_path", "name_or_path")  # the latter in tokenizer_config.json


def _config_items(config: Mapping[str, Any], path: str = "") -> Any:
    """(dotted key path, key, value) of every entry of the config and its sub-configs;
    the depth is bounded before this runs."""
    for key, value in config.items():
        where = f"{path}.{key}" if path else str(key)
        yield where, str(key), value
        if isinstance(value, Mapping):
            yield from _config_items(value, where)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, Mapping):
                    yield from _config_items(item, f"{where}[{i}]")


def check_hf_offline(config: Mapping[str, Any]) -> None:
    """HFModelError when config.json (or a sub-config in it) refers to anything outside the
    uploaded folder: a backbone or model named by repository or URL, remote code, pretrained
    backbone weights, a tokenizer class in another repository. PruneScope builds every model
    from the configuration alone and never downloads what a configuration names."""
    for where, key, value in _config_items(config):
        if key in _BOOKKEEPING_NAMES or value in (None, False, "", [], {}):
            continue
        fetching = key in _FETCHING_FLAGS
        named = (_REFERENCE_KEY.search(key) and not isinstance(value, (bool, int, float))
                 and not (key.endswith("backbone") and isinstance(value, Mapping)))
        elsewhere = key == "tokenizer_class" and isinstance(value, str) and "/" in value
        if fetching or named or elsewhere:
            raise HFModelError(
                f"config.json refers to something outside the uploaded folder ({where} = "
                f"{value!r}); PruneScope builds models from the folder alone and never downloads "
                "what a configuration names. Remove the entry (give a backbone as its "
                "`backbone_config` instead) and upload the folder again"
            )


# Upper bounds of a config.json's sizes, wherever they appear (sub-configs too): any
# integer under a size-like key, the layer counts, the class labels.
_HF_SIZE_KEY = re.compile(r"(?:^num_|^n_|_size$|_dim$|_embeddings$|^d_|^dim$|^n_embd$)")
MAX_HF_SIZE = 16 * 1024 * 1024
MAX_HF_LAYERS = 1024


def _check_hf_sizes(config: Mapping[str, Any]) -> None:
    for where, key, value in _config_items(config):
        if isinstance(value, bool):
            continue
        bound, what = None, ""
        if key in _HF_DEPTH_KEYS:
            bound, what = MAX_HF_LAYERS, "layers"
        elif key == "num_labels":
            bound, what = MAX_CLASSES, "classes"
        elif _HF_SIZE_KEY.search(key):
            bound, what = MAX_HF_SIZE, "as a size"
        if bound is not None and isinstance(value, int) and value > bound:
            raise HFModelError(f"config.json's {where} is {value:,}, more than the {bound:,} "
                               f"{what} PruneScope accepts")
        if key in ("id2label", "label2id") and isinstance(value, Mapping) \
                and len(value) > MAX_CLASSES:
            raise HFModelError(f"config.json's {where} names {len(value):,} labels, more than "
                               f"the {MAX_CLASSES:,} classes PruneScope accepts")


def hf_class_name(config: Mapping[str, Any]) -> str | None:
    """The class config.json's `architectures` names first (None when it names none);
    HFModelError when that is not a plain class name."""
    names = config.get("architectures") or []
    if isinstance(names, (str, bytes)) or not isinstance(names, (list, tuple)):
        raise HFModelError(
            f"config.json's `architectures` must be a list of class names, got {names!r}"
        )
    if not names:
        return None
    name = names[0]
    if not isinstance(name, str) or not _CLASS_NAME.fullmatch(name):
        raise HFModelError(f"config.json names an invalid architecture {name!r}")
    return name


def hf_num_labels(config: Mapping[str, Any]) -> int:
    """The class count transformers gives a config.json: `num_labels`, else the size of
    `id2label`, else its default of 2."""
    count = config.get("num_labels")
    if isinstance(count, int) and not isinstance(count, bool) and count > 0:
        return count
    id2label = config.get("id2label")
    if isinstance(id2label, Mapping) and id2label:
        return len(id2label)
    return 2
