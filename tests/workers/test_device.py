"""Device choice and transfers: the CPU here (no GPU on this machine), the request honoured."""

from __future__ import annotations

import numpy as np
import torch

from prunescope.workers.device import pick_device, release_device_memory, to_device


def test_the_device_follows_the_request_and_else_what_is_visible():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device().type == expected
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device(torch.device("meta")).type == "meta"


def test_batches_and_dicts_of_them_arrive_unchanged():
    x = torch.arange(6.0).reshape(2, 3)
    moved = to_device({"input_ids": x.long(), "mask": x > 2}, torch.device("cpu"))
    assert torch.equal(moved["input_ids"], x.long()) and torch.equal(moved["mask"], x > 2)
    meta = to_device(x, torch.device("meta"))
    assert meta.device.type == "meta" and meta.shape == x.shape


def test_release_frees_what_a_finished_job_left_in_reference_cycles():
    import gc
    import weakref

    class Held:
        pass

    gc.disable()  # only the release may collect
    try:
        held = Held()
        held.me = held  # a cycle, as a model and its hooks make
        held.weights = torch.zeros(1000)
        watch = weakref.ref(held)
        del held
        assert watch() is not None
        release_device_memory()
        assert watch() is None
    finally:
        gc.enable()


# ------------------------------------------------------------------ weights streamed by block


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(16, 64), torch.nn.ReLU(),
        torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.LayerNorm(64)),
        torch.nn.Linear(64, 10)).eval()


def test_a_streamed_model_computes_the_same_with_one_block_resident_at_a_time():
    from prunescope.workers.device import WeightStream, module_bytes

    model = _mlp()
    x = torch.randn(5, 16)
    with torch.inference_mode():
        expected = model(x)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    own_params = list(model.parameters())
    block = 64 * 64 * 4 + 64 * 4  # one 64×64 Linear with its bias
    stream = WeightStream(model, torch.device("cpu"), block_bytes=block)
    # The inner Sequential (Linear + LayerNorm) is over the budget, so it is split.
    kinds = [type(m).__name__ for m, _own in stream.blocks]
    assert kinds == ["Linear", "Linear", "LayerNorm", "Linear"]
    with torch.inference_mode():
        got = model(x)
    assert torch.equal(got, expected)
    leaves = [m for m, _ in stream.blocks]
    assert stream.peak == max(module_bytes(m) for m in leaves) < module_bytes(model)
    assert stream.resident == 0  # every copy released after the forward
    # Outside a forward the model holds its own (host) tensors, unchanged.
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p is q for p, q in zip(model.parameters(), own_params, strict=True))
    stream.remove()
    assert not model[0]._forward_pre_hooks and not model[0]._forward_hooks


def test_a_parent_too_large_for_a_block_streams_its_own_tensors_with_itself():
    from prunescope.workers.device import WeightStream

    class Scaled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = torch.nn.Parameter(torch.full((32,), 2.0))
            self.inner = torch.nn.Linear(32, 32)
            self.register_buffer("shift", torch.ones(32))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x) * self.scale + self.shift

    model = Scaled().eval()
    x = torch.randn(3, 32)
    with torch.inference_mode():
        expected = model(x)
    stream = WeightStream(model, torch.device("cpu"), block_bytes=32 * 32 * 4)
    assert [(type(m).__name__, own) for m, own in stream.blocks] == [("Scaled", True),
                                                                      ("Linear", False)]
    seen = []
    model.inner.register_forward_pre_hook(lambda *_: seen.append(stream.resident))
    with torch.inference_mode():
        assert torch.equal(model(x), expected)
    own = 2 * 32 * 4
    assert seen == [own + (32 * 32 + 32) * 4]  # the parent's own tensors, then the child's
    assert stream.resident == 0 and stream.peak == seen[0]


def test_place_models_keeps_them_whole_when_they_fit_else_streams_with_equal_results():
    from prunescope.workers.analyses.layers import compare_layers, tensor_batches
    from prunescope.workers.device import module_bytes, place_models
    from tests.workers.test_layers_analysis import digits_models as _fixture

    dense, pruned, x, y = _fixture.__wrapped__()
    assert place_models([dense, pruned], torch.device("cpu")) == []  # no budget on the CPU
    total = module_bytes(dense) + module_bytes(pruned)
    assert place_models([dense, pruned], torch.device("cpu"), budget_bytes=total) == []
    streams = place_models([dense, pruned], torch.device("cpu"), budget_bytes=total // 4)
    assert len(streams) == 2 and all(len(s.blocks) > 1 for s in streams)
    for s in streams:
        s.remove()

    batches = tensor_batches(x[:300], y[:300], 64)
    whole = compare_layers([dense, pruned], batches, 300, subsample=100)
    streamed = compare_layers([dense, pruned], batches, 300, subsample=100,
                              device_budget_bytes=total // 4)
    for key in ("cka", "svcca", "procrustes", "effective_rank", "predictions"):
        np.testing.assert_array_equal(whole[key], streamed[key], err_msg=key)
    assert not dense.conv1._forward_pre_hooks  # the analysis removed its hooks


def test_the_real_minilm_streamed_block_by_block_gives_the_same_attention_and_cka():
    import copy

    from prunescope.models.pruning import PRUNING_METHODS
    from prunescope.workers.analyses.layers import compare_layers, text_batches
    from prunescope.workers.datasets import load_builtin
    from prunescope.workers.device import module_bytes
    from tests.real_models import real_minilm

    dense, tokenizer = real_minilm()
    pruned = copy.deepcopy(dense)
    PRUNING_METHODS["magnitude_global"](pruned, 0.5)
    texts = list(load_builtin("english_sentences").texts_test[:12])
    batches = text_batches(texts, None, tokenizer, batch_size=6)
    budget = module_bytes(dense) // 3  # neither model fits; each block streams
    whole = compare_layers([dense.eval(), pruned.eval()], batches, len(texts), subsample=12,
                           attention=True)
    streamed = compare_layers([dense, pruned], batches, len(texts), subsample=12,
                              attention=True, device_budget_bytes=budget)
    for key in ("cka", "attention_js", "attention_entropy", "effective_rank"):
        np.testing.assert_array_equal(whole[key], streamed[key], err_msg=key)


# ------------------------------------------------------------------------ batch sizes


def test_the_batch_grows_to_fill_the_free_memory_within_its_bounds():
    from prunescope.workers.device import DEVICE_MEMORY_SHARE, fill_device_batch_size

    def probe(n: int) -> int:
        calls.append(n)
        return 1000 * n  # 1 kB of activations per example

    calls: list[int] = []
    gpu = torch.device("cuda")
    assert fill_device_batch_size(gpu, 64, probe, free_bytes=10**6) == int(
        DEVICE_MEMORY_SHARE * 10**6 / 1000)
    assert calls == [8]
    assert fill_device_batch_size(gpu, 64, probe, free_bytes=10**9) == 4096  # the limit
    assert fill_device_batch_size(gpu, 64, probe, free_bytes=10**4) == 64  # never below default
    calls.clear()
    assert fill_device_batch_size(torch.device("cpu"), 64, probe) == 64 and calls == []
    assert fill_device_batch_size(gpu, 64, None, free_bytes=10**6) == 64
