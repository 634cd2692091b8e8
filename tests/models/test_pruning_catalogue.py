"""The torch-free pruning catalogue agrees with the methods; the catalogue and the architecture
registry load the same whichever module is imported first."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from prunescope.models.pruning import PRUNING_METHODS as LAZY_METHODS
from prunescope.models.pruning.catalogue import (
    FLAGS,
    PRUNING_CATALOGUE,
    method_flag,
    sparsity_error,
)
from prunescope.models.pruning.methods import PRUNING_METHODS


def _summary(doc: str | None) -> str:
    """A docstring's first paragraph on one line."""
    return " ".join((doc or "").strip().split("\n\n")[0].split())


def test_every_method_is_catalogued_with_its_docstring_summary_and_flags():
    assert list(PRUNING_CATALOGUE) == list(PRUNING_METHODS)
    assert LAZY_METHODS is PRUNING_METHODS
    for name, method in PRUNING_METHODS.items():
        info = PRUNING_CATALOGUE[name]
        assert info.description == _summary(method.__doc__), name
        for flag in FLAGS:
            default = None if flag == "fixed_sparsity" else False
            assert getattr(method, flag, default) == getattr(info, flag), (name, flag)
            assert method_flag(name, flag) == bool(getattr(info, flag))


def test_sparsity_error_and_flags_read_the_catalogue():
    assert sparsity_error("wanda_4of8", 0.5) is None
    assert "use sparsity 0.5" in sparsity_error("sparsegpt_2of4", 0.7)
    assert sparsity_error("magnitude_global", 0.97) is None
    assert sparsity_error("astrology", 0.5) is None  # unknown names are the caller's check
    assert method_flag("snip", "needs_calibration") and not method_flag("random", "needs_training")
    with pytest.raises(ValueError, match="unknown pruning method flag"):
        method_flag("snip", "needs_coffee")


def _modules_after(code: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport json, sys\nprint(json.dumps("
                          "sorted(m for m in sys.modules if m.split('.')[0] == 'torch')))"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.splitlines()[-1])


def test_the_catalogue_imports_without_torch():
    assert _modules_after("from prunescope.models.pruning import PRUNING_CATALOGUE, "
                          "method_flag, sparsity_error") == []
    assert _modules_after("from prunescope.models.pruning import PRUNING_METHODS") != []


@pytest.mark.parametrize("first", ["prunescope.models.resnet", "prunescope.models.vit",
                                   "prunescope.models.small", "prunescope.models.registry"])
def test_create_model_knows_every_architecture_whichever_module_comes_first(first):
    code = (f"import {first}\n"
            "from prunescope.models.registry import create_model, list_architectures\n"
            "names = [n for n in list_architectures() if n != 'huggingface']\n"
            "[create_model(n) for n in names]\n"
            "print(','.join(names))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["cnn_small,mlp,resnet18,resnet20,vit_small"]
