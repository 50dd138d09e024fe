"""Mixing: weight distributions, cutmix areas, the mixed multi-head loss, manifold hooks, exact resume, a toy fit."""
from __future__ import annotations

import copy

import cv2
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy import stats

from okkhor.config import MixConfig, ModelConfig
from okkhor.models.model import build_model
from okkhor.targets import Targets
from okkhor.training.mixing import MixedTargets, Mixer, MixPlan, backbone_stages, multihead_loss, unwrap_model


@pytest.fixture(autouse=True)
def one_thread():
    """Small CPU ops run faster on one thread, and far faster when other processes share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def lambdas(alpha: float, batches: int = 100, batch: int = 64) -> np.ndarray:
    mixer = Mixer(MixConfig(kind="mixup", alpha=alpha), seed=7)
    return torch.cat([mixer.plan((batch, 1, 8, 8)).weights[:, 0] for _ in range(batches)]).numpy()


@pytest.mark.parametrize("alpha", [0.2, 1.0, 4.0])
def test_mixup_lambdas_follow_beta(alpha):
    lam = lambdas(alpha)
    assert lam.min() >= 0 and lam.max() <= 1
    assert abs(lam.mean() - 0.5) < 0.02
    assert abs(lam.var() - 1 / (4 * (2 * alpha + 1))) < 0.01            # Var Beta(a, a) = 1 / (4 (2a + 1))
    assert stats.kstest(lam, stats.beta(alpha, alpha).cdf).pvalue > 1e-3


def test_small_alpha_puts_the_mass_near_0_and_1():
    near_ends = lambda lam: np.mean((lam < 0.1) | (lam > 0.9))  # noqa: E731
    assert near_ends(lambdas(0.2)) > 0.5
    assert near_ends(lambdas(1.0)) == pytest.approx(0.2, abs=0.03)


def test_mixup_mixes_pairs_from_a_permutation():
    mixer = Mixer(MixConfig(kind="mixup"), seed=1)
    x = torch.randn(6, 1, 4, 4)
    y = torch.arange(12).view(6, 2)
    plan = mixer.plan(x.shape)
    assert torch.equal(plan.index[:, 0], torch.arange(6))
    assert sorted(plan.index[:, 1].tolist()) == list(range(6))
    lam = plan.weights[:, 0].view(6, 1, 1, 1)
    assert torch.allclose(plan.apply(x), lam * x + (1 - lam) * x[plan.index[:, 1]], atol=1e-6)
    mt = plan.targets(y)
    assert mt.labels.shape == (6, 2, 2) and torch.equal(mt.labels[:, 1], y[plan.index[:, 1]])


def test_dirichlet_weights():
    k, b = 4, 32
    mixer = Mixer(MixConfig(kind="dirichlet", k=k, alpha=0.5), seed=3)
    weights = []
    for _ in range(50):
        plan = mixer.plan((b, 1, 8, 8))
        assert plan.weights.shape == (b, k) and plan.index.shape == (b, k)
        assert (plan.weights >= 0).all()
        assert torch.allclose(plan.weights.sum(1), torch.ones(b), atol=1e-5)
        assert all(sorted(plan.index[:, j].tolist()) == list(range(b)) for j in range(k))
        weights.append(plan.weights)
    w = torch.cat(weights)
    assert torch.allclose(w.mean(0), torch.full((k,), 1 / k), atol=0.03)
    x = torch.randn(b, 1, 8, 8)
    expected = sum(plan.weights[:, j].view(b, 1, 1, 1) * x[plan.index[:, j]] for j in range(k))
    assert torch.allclose(plan.apply(x), expected, atol=1e-5)


def numbered_batch(b: int, h: int, w: int, channels: int = 1) -> torch.Tensor:
    """Image i is filled with the value i + 1, so a mixed pixel tells which image it came from."""
    return torch.arange(1, b + 1, dtype=torch.float32).view(b, 1, 1, 1).expand(b, channels, h, w).contiguous()


def pasted_shares(plan, x: torch.Tensor) -> list[float]:
    """Check that each mixed image's share of its own and of its partner's pixels are its two label weights and
    that the mask's area is the partner's weight; returns the partner shares (samples paired with themselves
    left out)."""
    out = plan.apply(x)
    partner = plan.index[:, 1]
    shares = []
    for i in range(x.shape[0]):
        if partner[i] == i:
            continue
        from_partner = (out[i] == partner[i] + 1).float().mean().item()
        from_self = (out[i] == i + 1).float().mean().item()
        assert from_partner == pytest.approx(plan.weights[i, 1].item(), abs=1e-6)
        assert from_self == pytest.approx(plan.weights[i, 0].item(), abs=1e-6)
        shares.append(from_partner)
    assert torch.allclose(plan.mask.float().mean((1, 2, 3)), plan.weights[:, 1])
    assert torch.allclose(plan.weights.sum(1), torch.ones(x.shape[0]))
    return shares


def test_cutmix_label_weight_is_the_pasted_area():
    mixer = Mixer(MixConfig(kind="cutmix", alpha=1.0), seed=5)
    x = numbered_batch(64, 12, 20, channels=2)
    seen = [share for _ in range(10) for share in pasted_shares(mixer.plan(x.shape), x)]
    assert len(seen) > 400 and 0.15 < np.mean(seen) < 0.5   # clipping at the borders shrinks boxes below 1 - lam


def test_fmix_label_weight_equals_its_mask_area():
    b, h, w = 32, 16, 24
    mixer = Mixer(MixConfig(kind="fmix", alpha=1.0), seed=3)
    x = numbered_batch(b, h, w)
    lams = []
    for _ in range(5):
        plan = mixer.plan(x.shape)
        assert plan.kind == "fmix" and plan.mask.shape == (b, 1, h, w)
        pasted_shares(plan, x)
        lams += plan.weights[:, 0].tolist()
        # a low-frequency mask is a few smooth blobs: most pixels share their right neighbour's value
        m = plan.mask[:, 0]
        assert (m[:, :, 1:] == m[:, :, :-1]).float().mean() > 0.85
    # unlike a clipped box, the area is exactly the Beta draw (to a pixel): mean 0.5 for alpha 1
    assert np.mean(lams) == pytest.approx(0.5, abs=0.08)


def test_cutmix_through_the_mixer_call():
    seen = {}

    def model(x):
        seen["x"] = x
        return (x.mean((1, 2, 3)).unsqueeze(1).expand(-1, 3),)

    mixer = Mixer(MixConfig(kind="cutmix"), seed=2)
    twin = copy.deepcopy(mixer)
    x, y = torch.rand(8, 1, 16, 16), torch.randint(0, 3, (8, 1))
    logits, mt = mixer(model, x, y, epoch=0)
    plan = twin.plan(x.shape)
    assert torch.equal(seen["x"], plan.apply(x))
    assert torch.equal(mt.weights, plan.weights) and torch.equal(mt.labels, y[plan.index])


def test_both_switches_between_cutmix_and_mixup():
    mixer = Mixer(MixConfig(kind="both", switch=0.3), seed=0)
    kinds = [mixer.plan((4, 1, 8, 8)).kind for _ in range(1000)]
    assert set(kinds) == {"cutmix", "mixup"}
    assert kinds.count("cutmix") / 1000 == pytest.approx(0.3, abs=0.05)


def test_prob_and_off_epoch():
    assert all(Mixer(MixConfig(kind="mixup", prob=0.0)).plan((4, 1, 8, 8)) is None for _ in range(20))
    half = Mixer(MixConfig(kind="mixup", prob=0.5), seed=1)
    mixed = sum(half.plan((4, 1, 8, 8)) is not None for _ in range(1000))
    assert mixed / 1000 == pytest.approx(0.5, abs=0.05)
    off = Mixer(MixConfig(kind="mixup", off_epoch=3), seed=1)
    assert off.plan((4, 1, 8, 8), epoch=2) is not None
    state = off.state_dict()["generator"].clone()
    assert off.plan((4, 1, 8, 8), epoch=3) is None and off.plan((4, 1, 8, 8), epoch=9) is None
    assert torch.equal(off.generator.get_state(), state)      # unmixed epochs draw nothing
    y = torch.tensor([[1, 2], [0, 1]])
    model = lambda x: (x.flatten(1),)  # noqa: E731
    _, mt = off(model, torch.zeros(2, 1, 2, 2), y, epoch=5)
    assert torch.equal(mt.labels[:, 0], y) and torch.equal(mt.weights, torch.ones(2, 1))


@pytest.mark.parametrize("kind", ["mixup", "cutmix", "both", "dirichlet", "manifold", "fmix"])
def test_state_dict_round_trip_reproduces_the_draws(kind):
    mixer = Mixer(MixConfig(kind=kind, prob=0.8), seed=11)
    shape = (16, 1, 10, 10)
    for _ in range(3):
        mixer.plan(shape)
    state = copy.deepcopy(mixer.state_dict())
    expected = [mixer.plan(shape) for _ in range(5)]
    resumed = Mixer(MixConfig(kind=kind, prob=0.8), seed=999)
    resumed.load_state_dict(state)
    for a, b in zip(expected, [resumed.plan(shape) for _ in range(5)], strict=False):
        assert (a is None) == (b is None)
        if a is not None:
            assert a.kind == b.kind and torch.equal(a.index, b.index) and torch.equal(a.weights, b.weights)
            assert (a.mask is None and b.mask is None) or torch.equal(a.mask, b.mask)
    with pytest.raises(ValueError):
        resumed.load_state_dict({})


def test_constructor_checks():
    with pytest.raises(TypeError):
        Mixer(3)
    with pytest.raises(TypeError):
        Mixer("mixup", seed=1.5)
    with pytest.raises(ValueError, match="mix.kind"):
        Mixer("swirl")
    for bad in ({"alpha": 0.0}, {"prob": 1.5}, {"switch": -0.1}, {"k": 1}, {"layer": -1}, {"off_epoch": -2}):
        with pytest.raises(ValueError):
            Mixer(MixConfig(kind="mixup", **bad))
    with pytest.raises(TypeError):
        Mixer(MixConfig(kind="mixup", k=2.0))
    assert Mixer("cutmix").cfg.kind == "cutmix"


# ----------------------------------------------------------------------------------------------------- loss

def hand_loss(logits, labels, weights, loss_weights, eps=0.0):
    """sum_t w_t sum_k lambda_k CE, written out with log-softmax; per sample."""
    out = []
    for b in range(labels.shape[0]):
        total = 0.0
        for t, w in enumerate(loss_weights):
            logp = torch.log_softmax(logits[t][b].double(), 0)
            for k in range(labels.shape[1]):
                ce = -(1 - eps) * logp[labels[b, k, t]] - eps * logp.mean()
                total += w * weights[b, k].item() * ce.item()
        out.append(total)
    return np.array(out)


def tiny_batch():
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 4, generator=g), torch.randn(3, 3, generator=g))
    labels = torch.tensor([[[0, 2], [3, 1]], [[1, 0], [1, 0]], [[2, 1], [0, 2]]])   # [B=3, K=2, T=2]
    weights = torch.tensor([[0.7, 0.3], [0.5, 0.5], [0.1, 0.9]])
    return logits, MixedTargets(labels, weights)


def test_mixed_loss_matches_a_hand_computation():
    logits, mt = tiny_batch()
    expected = hand_loss(logits, mt.labels, mt.weights, [2.0, 1.0]).mean()
    assert multihead_loss(logits, mt, [2.0, 1.0]).item() == pytest.approx(expected, rel=1e-5)


def test_label_smoothing_matches_a_hand_computation():
    logits, mt = tiny_batch()
    expected = hand_loss(logits, mt.labels, mt.weights, [2.0, 1.0], eps=0.1).mean()
    assert multihead_loss(logits, mt, [2.0, 1.0], label_smoothing=0.1).item() == pytest.approx(expected, rel=1e-5)
    plain = multihead_loss(logits, mt, [2.0, 1.0]).item()
    confident = (torch.tensor([[20.0, 0, 0, 0]] * 3), torch.tensor([[0, 20.0, 0]] * 3))
    mt_conf = MixedTargets.unmixed(torch.tensor([[0, 1]] * 3))
    assert multihead_loss(confident, mt_conf, [1, 1], label_smoothing=0.1) > multihead_loss(confident, mt_conf,
                                                                                             [1, 1])
    assert plain != pytest.approx(expected)


def test_ohem_keeps_the_hardest_fraction():
    logits, mt = tiny_batch()
    per_sample = np.sort(hand_loss(logits, mt.labels, mt.weights, [2.0, 1.0]))[::-1]
    assert multihead_loss(logits, mt, [2.0, 1.0], ohem=2 / 3).item() == pytest.approx(per_sample[:2].mean(), rel=1e-5)
    assert multihead_loss(logits, mt, [2.0, 1.0], ohem=0.01).item() == pytest.approx(per_sample[0], rel=1e-5)
    with pytest.raises(ValueError):
        multihead_loss(logits, mt, [2.0, 1.0], ohem=0.0)
    with pytest.raises(ValueError):
        multihead_loss(logits, mt, [2.0])


def test_loss_is_float32_for_half_precision_logits():
    logits, mt = tiny_batch()
    half = tuple(t.to(torch.bfloat16) for t in logits)
    loss = multihead_loss(half, mt, [2.0, 1.0])
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(multihead_loss(logits, mt, [2.0, 1.0]).item(), rel=2e-2)


# ------------------------------------------------------------------------------------------------- manifold

TARGETS = Targets.make(["grapheme_root", "vowel_diacritic"], [5, 3])


@pytest.mark.parametrize("name,layer,stage,following", [("resnet18", 2, "layer2", "layer3"),
                                                         ("efficientnet_b0", 2, "blocks.2", "blocks.3")])
def test_manifold_mixes_the_chosen_stage(name, layer, stage, following):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name), TARGETS).eval()
    stages = dict(backbone_stages(model))
    assert stage in stages and list(stages)[layer] == stage
    x, y = torch.rand(4, 1, 32, 32), torch.randint(0, 3, (4, 2))
    captured = {}
    modules = dict(model.backbone.named_modules())
    modules[stage].register_forward_hook(lambda m, i, o: captured.__setitem__("before", o.detach()))
    modules[following].register_forward_pre_hook(lambda m, i: captured.__setitem__("after", i[0].detach()))

    mixer = Mixer(MixConfig(kind="manifold", layer=layer, alpha=1.0), seed=4)
    plan = copy.deepcopy(mixer).plan(x.shape)
    logits, mt = mixer(model, x, y, epoch=0)
    assert not torch.allclose(captured["after"], captured["before"])
    assert torch.allclose(captured["after"], plan.apply(captured["before"]), atol=1e-6)
    assert len(modules[stage]._forward_hooks) == 1          # the mixing hook is gone, the test's own remains
    assert [t.shape for t in logits] == [(4, 5), (4, 3)]
    assert torch.equal(mt.weights, plan.weights)
    multihead_loss(logits, mt, [2.0, 1.0]).backward()


def test_manifold_errors_and_wrappers():
    model = build_model(ModelConfig(name="resnet18"), TARGETS)
    with pytest.raises(ValueError, match="stages 0..4"):
        Mixer(MixConfig(kind="manifold", layer=5))(model, torch.rand(2, 1, 32, 32), torch.zeros(2, 2).long(), 0)
    with pytest.raises(ValueError, match="feature_info"):
        backbone_stages(nn.Sequential(nn.Conv2d(1, 2, 3)))

    class Compiled(nn.Module):   # stands in for torch.compile's OptimizedModule
        def __init__(self, inner):
            super().__init__()
            self._orig_mod = inner

        def forward(self, x):
            raise AssertionError("manifold mixing must call the eager module")

    wrapped = Compiled(nn.DataParallel(model))
    assert unwrap_model(wrapped) is model
    logits, _ = Mixer(MixConfig(kind="manifold", layer=1))(wrapped, torch.rand(2, 1, 32, 32),
                                                           torch.zeros(2, 2).long(), 0)
    assert logits[0].shape == (2, 5)


def test_manifold_under_autocast():
    model = build_model(ModelConfig(name="resnet18"), TARGETS)
    mixer = Mixer(MixConfig(kind="manifold", layer=3), seed=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, mt = mixer(model, torch.rand(4, 1, 32, 32), torch.randint(0, 3, (4, 2)), 0)
        loss = multihead_loss(logits, mt, [2.0, 1.0])
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()


# ------------------------------------------------------------------------------------------------ toy fit

def shapes_set(n: int = 48, size: int = 32, seed: int = 0):
    """Drawn shapes: target 0 is the shape (disc, square, cross, triangle), target 1 its size (small, large)."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, size, size), np.uint8)
    labels = np.stack([np.arange(n) % 4, (np.arange(n) // 4) % 2], axis=1)
    for i, (shape, big) in enumerate(labels):
        r = int(size * (0.32 if big else 0.18) + rng.integers(-1, 2))
        cx, cy = (int(v) for v in size // 2 + rng.integers(-3, 4, size=2))
        img = images[i]
        if shape == 0:
            cv2.circle(img, (cx, cy), r, 255, -1)
        elif shape == 1:
            cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + r), 255, -1)
        elif shape == 2:
            cv2.line(img, (cx - r, cy), (cx + r, cy), 255, 3)
            cv2.line(img, (cx, cy - r), (cx, cy + r), 255, 3)
        else:
            pts = np.array([[cx, cy - r], [cx - r, cy + r], [cx + r, cy + r]], np.int32)
            cv2.fillPoly(img, [pts], 255)
    return torch.from_numpy(images).unsqueeze(1).float() / 255, torch.from_numpy(labels).long()


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        block = lambda i, o: [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU()]  # noqa: E731
        self.body = nn.Sequential(*block(1, 16), nn.MaxPool2d(2), *block(16, 32), nn.MaxPool2d(2), *block(32, 32),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.heads = nn.ModuleList([nn.Linear(32, 4), nn.Linear(32, 2)])

    def forward(self, x):
        f = self.body(x)
        return tuple(h(f) for h in self.heads)


def test_toy_set_converges_with_mixup():
    """With mixup (alpha 0.4) on every batch, the unmixed eval loss on the toy set falls below half its start
    within 120 steps of batch 16, and the shape head is well above chance."""
    torch.manual_seed(0)
    x, y = shapes_set()
    model = TinyNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    mixer = Mixer(MixConfig(kind="mixup", alpha=0.4), seed=0)
    order = torch.Generator().manual_seed(0)

    def eval_loss() -> float:
        model.eval()
        with torch.no_grad():
            loss = multihead_loss(model(x), MixedTargets.unmixed(y), [1.0, 1.0]).item()
        model.train()
        return loss

    start = eval_loss()
    for _ in range(120):
        idx = torch.randperm(len(x), generator=order)[:16]
        logits, mt = mixer(model, x[idx], y[idx], epoch=0)
        assert mt.weights.shape == (16, 2)
        loss = multihead_loss(logits, mt, [1.0, 1.0])
        opt.zero_grad()
        loss.backward()
        opt.step()
    end = eval_loss()
    assert end < 0.5 * start, (start, end)
    model.eval()
    with torch.no_grad():
        shape_pred = model(x)[0].argmax(1)
    assert (shape_pred == y[:, 0]).float().mean() > 0.6     # chance is 0.25


def test_plan_moves_to_the_batch_dtype():
    plan = MixPlan("mixup", torch.tensor([[0, 1], [1, 0]]), torch.tensor([[0.25, 0.75], [0.5, 0.5]]))
    out = plan.apply(torch.ones(2, 3, dtype=torch.float16))
    assert out.dtype == torch.float16 and torch.allclose(out.float(), torch.ones(2, 3))
    assert F.one_hot(plan.targets(torch.tensor([[1], [0]])).labels[:, :, 0], 2).shape == (2, 2, 2)
