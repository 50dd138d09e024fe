"""Out-of-memory recovery: detection, fault injection, and an update equal to the one without the fault."""
from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn as nn
from ignite.engine import Engine, Events

from okkhor.errors import OkkhorError
from okkhor.models.model import GraphemeModel
from okkhor.targets import Targets
from okkhor.training.mixing import MixedTargets, multihead_loss
from okkhor.training.oom import OomRecovery, is_oom
from okkhor.training.step import BatchPlan
from okkhor.training.testing import FaultInjector

TARGETS = Targets.make(["a", "b", "c"], [7, 3, 2])
# SGD's update is proportional to the gradient, so any wrong chunk weight shows (AdamW's is blind to a gradient
# scaled uniformly); float32 sums in another order differ by about 1e-7 relative
TOL = dict(rtol=1e-5, atol=1e-6)
OPTIMIZERS = {"sgd": lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),
              "adamw": lambda params: torch.optim.AdamW(params, lr=1e-2)}


class TinyBackbone(nn.Module):
    """Conv + GELU + pooling: no batch norm, so every sample's loss depends on that sample alone."""

    num_features = 8

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.act = nn.GELU()

    def forward(self, x):
        return self.act(self.conv(x)).mean((2, 3))


@pytest.fixture(autouse=True)
def count_collections(monkeypatch):
    """Recovery collects garbage (0.1-1 s with torch and timm loaded): count the calls instead of paying them."""
    calls: list[int] = []
    monkeypatch.setattr("okkhor.training.oom.gc.collect", lambda *a: calls.append(1) or 0)
    return calls


def make_model() -> GraphemeModel:
    torch.manual_seed(0)
    return GraphemeModel(TinyBackbone(), TARGETS)


def make_data(batches: int = 6, size: int = 8):
    g = torch.Generator().manual_seed(1)
    return [(torch.rand(size, 1, 12, 12, generator=g),
             torch.stack([torch.randint(0, n, (size,), generator=g) for n in TARGETS.num_classes], 1))
            for _ in range(batches)]


def train(data, plan: BatchPlan, oom_at: int = -1, fail_in_backward: int = 0, optimizer: str = "sgd"):
    """A small accumulating trainer shaped like engine.TrainStep, its forward/backward run through OomRecovery."""
    model = make_model()
    optimizer = OPTIMIZERS[optimizer](model.parameters())
    log: list[str] = []
    recovery = OomRecovery(plan, model, injector=FaultInjector(oom_at), log=log.append)
    state = {"left": 0, "len": 0, "backward_failures": fail_in_backward}

    def micro_step(x, y, weight):
        logits = model(x)
        loss = multihead_loss(logits, MixedTargets.unmixed(y), TARGETS.weights)
        (loss * weight / state["len"]).backward()
        if state["backward_failures"]:  # out of memory after the backward began adding to the gradients
            state["backward_failures"] -= 1
            raise torch.OutOfMemoryError("CUDA out of memory (simulated during backward)")
        return loss

    def step(engine, batch):
        if state["left"] == 0:
            state["len"] = state["left"] = plan.accum
        x, y = batch
        loss = recovery.run(micro_step, x, y, engine.state.iteration)
        state["left"] -= 1
        if state["left"] == 0:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return float(loss)

    engine = Engine(step)
    recovery.attach(engine)
    losses = []
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output))
    engine.run(data, max_epochs=1)
    return model, log, losses


@functools.lru_cache(maxsize=None)
def reference_run(accum: int, optimizer: str = "sgd"):
    """The run without a fault (shared by the tests that compare against it)."""
    return train(make_data(), BatchPlan(8, accum), optimizer=optimizer)


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=False):
        torch.testing.assert_close(pa, pb, **TOL, msg=name)


@pytest.mark.parametrize("accum, oom_at, optimizer", [(1, 1, "sgd"), (1, 3, "sgd"), (2, 2, "sgd"), (2, 3, "sgd"),
                                                      (2, 3, "adamw")])
def test_recovered_update_equals_the_unfaulted_one(accum, oom_at, optimizer, count_collections):
    reference, ref_log, ref_losses = reference_run(accum, optimizer)
    plan = BatchPlan(8, accum)
    recovered, log, losses = train(make_data(), plan, oom_at=oom_at, optimizer=optimizer)
    assert ref_log == [] and len(log) == 1 and len(count_collections) == 1
    assert f"iteration {oom_at}" in log[0] and "micro-batch of 8" in log[0] and "micro-batches of 4" in log[0]
    assert_same_weights(reference, recovered)
    assert losses == pytest.approx(ref_losses, rel=1e-6)
    # the plan changes at the end of the epoch: half the micro-batch, twice the accumulation
    assert (plan.batch_size, plan.accum) == (4, 2 * accum)


def test_failure_inside_backward_at_a_group_start_is_exact():
    reference, _, _ = reference_run(1)
    recovered, log, _ = train(make_data(), BatchPlan(8, 1), fail_in_backward=1)
    assert len(log) == 1 and "lost" not in log[0]
    assert_same_weights(reference, recovered)


def test_failure_inside_backward_mid_group_says_what_was_lost():
    data = make_data(batches=1)
    model = make_model()
    log: list[str] = []
    recovery = OomRecovery(BatchPlan(8, 2), model, log=log.append)
    x, y = data[0]
    calls = {"n": 0}

    def micro_step(xc, yc, weight):
        loss = multihead_loss(model(xc), MixedTargets.unmixed(yc), TARGETS.weights)
        (loss * weight).backward()
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("CUDA error: out of memory")
        return loss

    recovery.run(micro_step, x, y, 1)     # the group's first micro-batch
    recovery.run(micro_step, x, y, 2)     # fails after its backward added to the first one's gradients
    assert "gradients of this accumulation group's earlier micro-batches were lost" in log[-1]
    assert recovery.chunk == 4


def test_repeated_failures_halve_again_and_stop_at_the_minimum():
    model = make_model()
    log: list[str] = []
    recovery = OomRecovery(BatchPlan(8, 1), model, log=log.append, min_batch=2)
    x, y = make_data(batches=1)[0]
    sizes: list[int] = []

    def always_oom(xc, yc, weight):
        sizes.append(len(xc))
        raise torch.OutOfMemoryError("out of memory")

    with pytest.raises(OkkhorError, match="even with a micro-batch of 2"):
        recovery.run(always_oom, x, y, 5)
    assert sizes == [8, 4, 2] and len(log) == 2


def test_chunks_cover_the_batch_without_a_single_sample_tail():
    model = make_model()
    recovery = OomRecovery(BatchPlan(7, 1), model, log=lambda m: None)
    recovery.chunk = 3
    x, y = make_data(batches=1, size=7)[0]
    seen: list[tuple[int, float]] = []

    def record(xc, yc, weight):
        seen.append((len(xc), weight))
        return torch.tensor(1.0)

    total = recovery.run(record, x, y, 1)
    assert [n for n, _ in seen] == [3, 4] and math.isclose(sum(w for _, w in seen), 1.0)
    assert float(total) == pytest.approx(1.0)


def test_other_errors_pass_through():
    recovery = OomRecovery(BatchPlan(8, 1), make_model(), log=lambda m: None)
    x, y = make_data(batches=1)[0]

    def broken(xc, yc, weight):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes"):
        recovery.run(broken, x, y, 1)
    assert recovery.chunk is None


def test_is_oom():
    assert is_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_oom(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes"))
    assert is_oom(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"))
    assert not is_oom(RuntimeError("Expected all tensors to be on the same device"))
    assert not is_oom(ValueError("out of memory"))


def test_fault_injector():
    inject = FaultInjector(3)
    inject(1)
    inject(2)
    with pytest.raises(torch.OutOfMemoryError):
        inject(3)
    inject(3)  # once only: the retry of the same iteration goes through
    FaultInjector(-1)(1)
    for bad in (0, -2):
        with pytest.raises(ValueError):
            FaultInjector(bad)
    with pytest.raises(TypeError):
        FaultInjector(True)
    with pytest.raises(TypeError):
        OomRecovery(object(), make_model())
