"""Device choice and transfers: the CPU here (no GPU on this machine), the request honoured."""

from __future__ import annotations

import torch

from workers.device import pick_device, release_device_memory, to_device


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
