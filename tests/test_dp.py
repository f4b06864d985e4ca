import dataclasses
import hashlib
import math

import numpy as np
import pytest
import torch
from opacus.accountants import PRVAccountant

from post import dp
from post.prompt import SoftPrompt, Verbalizer, encode
from post.tasks import get_task, load_split
from post.tune import example_losses, per_sample_grads

TASK = get_task("trec")  # six classes: a non-trivial verbalizer
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def batch(tiny):
    model, tok = tiny
    split = load_split("trec", "train", 7)
    texts = list(split.texts)
    texts[0] = texts[0] + " and then a much longer tail so that this example pads the others"  # uneven lengths
    prompt = SoftPrompt.from_text(model, tok, TASK.instruction, 5)
    return (model, Verbalizer.for_task(TASK, tok), encode(TASK, tok, texts, 32), torch.tensor(split.labels),
            prompt.weight, texts, tok)


def test_per_sample_grads_equal_one_example_at_a_time(batch):
    model, verbalizer, enc, labels, weight, texts, tok = batch
    grads, losses = per_sample_grads(model, verbalizer, enc, labels, weight)
    assert grads.shape == (len(texts), *weight.shape)  # the batch in dimension 0
    for i, text in enumerate(texts):
        alone = encode(TASK, tok, [text], 32)  # no padding at all
        copy = weight.detach().clone().requires_grad_()
        loss = example_losses(model, verbalizer, alone, labels[i:i + 1], copy).sum()
        (reference,) = torch.autograd.grad(loss, copy)
        assert (grads[i] - reference).abs().max() < 1e-5
        assert abs(losses[i] - loss.detach()) < 1e-5
    assert len({round(float(g.norm()), 6) for g in grads}) == len(texts)  # genuinely different per example


def test_bf16_per_sample_grads_stay_close_to_fp32(batch):
    """Training steps run under bf16 autocast: each example's gradient is still its own, at bf16 precision."""
    model, verbalizer, enc, labels, weight, _, _ = batch
    exact, _ = per_sample_grads(model, verbalizer, enc, labels, weight)
    with torch.autocast("cpu", torch.bfloat16):
        fast, _ = per_sample_grads(model, verbalizer, enc, labels, weight)
    assert fast.dtype == torch.float32 and fast.shape == exact.shape
    cosine = torch.nn.functional.cosine_similarity(fast.flatten(1), exact.flatten(1))
    assert cosine.min() > 0.99


def test_per_sample_grads_sum_to_the_batch_gradient(batch):
    model, verbalizer, enc, labels, weight, _, _ = batch
    grads, _ = per_sample_grads(model, verbalizer, enc, labels, weight)
    shared = weight.detach().clone().requires_grad_()
    (full,) = torch.autograd.grad(example_losses(model, verbalizer, enc, labels, shared).sum(), shared)
    assert (grads.sum(0) - full).abs().max() < 1e-5


def _dp_step(weight: torch.nn.Parameter, grad_sample: torch.Tensor, sigma: float, clip: float, expected: float,
             seed: int = 0):
    plan = dp.DPPlan(8.0, 1e-5, sigma, clip, expected / 100, 1, 100)
    optimizer, accountant = dp.optimizer(weight, torch.optim.SGD([weight], lr=1.0), plan, dp.SeededStream(seed))
    optimizer.zero_grad()
    dp.set_grad_sample(weight, grad_sample)
    optimizer.step()
    return weight.grad.clone(), accountant


def test_clipping_bounds_each_examples_contribution(batch):
    model, verbalizer, enc, labels, weight, _, _ = batch
    grads, _ = per_sample_grads(model, verbalizer, enc, labels, weight)
    norms = grads.flatten(1).norm(dim=1)
    clip = float(norms.median())  # about half the examples get clipped
    assert (norms > clip * 1.01).any() and (norms < clip).any()
    param = torch.nn.Parameter(weight.detach().clone())
    grad, _ = _dp_step(param, grads, sigma=0.0, clip=clip, expected=4.0)
    factors = (clip / (norms + 1e-6)).clamp(max=1.0)
    clipped = grads * factors[:, None, None]
    assert (clipped.flatten(1).norm(dim=1) <= clip * (1 + 1e-5)).all()
    assert torch.allclose(grad * 4.0, clipped.sum(0), atol=1e-6)  # noise-free: the clipped sum over q*N
    # one example, however large its gradient, moves the sum by at most C
    outlier = torch.cat([grads, 1e3 * grads[:1]])
    param = torch.nn.Parameter(weight.detach().clone())
    grad_with, _ = _dp_step(param, outlier, sigma=0.0, clip=clip, expected=4.0)
    assert float(((grad_with - grad) * 4.0).norm()) <= clip * (1 + 1e-5)


def test_empty_poisson_batch_is_a_noisy_accounted_step():
    stream = dp.SeededStream(0)
    sizes = [len(dp.poisson_batch(50, 1 / 50, stream)) for _ in range(200)]
    assert 0 in sizes and max(sizes) > 1  # Poisson: sizes vary and are sometimes zero
    weight = torch.nn.Parameter(torch.zeros(40, 30))
    grad, accountant = _dp_step(weight, weight.new_zeros((0, 40, 30)), sigma=2.0, clip=0.5, expected=4.0)
    assert accountant.history == [(2.0, 4.0 / 100, 1)]
    assert grad.std().item() == pytest.approx(2.0 * 0.5 / 4.0, rel=0.05)  # pure noise, sigma*C / (q*N)


def test_secret_streams_never_repeat_and_seeded_streams_are_independent():
    draws = lambda pair: [stream.uniform(4) for stream in pair]  # noqa: E731
    secret = [draws(dp.streams("secret", seed=0)) for _ in range(2)]
    assert not any(np.array_equal(a, b) for a in secret[0] for b in secret[1])  # the seed argument plays no part
    seeded = [draws(dp.streams("seeded", seed)) for seed in (5, 5, 6)]
    assert all(np.array_equal(a, b) for a, b in zip(seeded[0], seeded[1]))  # replayable: tests and debugging only
    sampler, noise = seeded[0]
    assert not np.array_equal(sampler, noise)
    assert not any(np.array_equal(a, b) for a in seeded[0] for b in seeded[2])  # seed 5's noise is not 6's sampler
    with pytest.raises(ValueError, match="randomness"):
        dp.streams("fixed")


def test_secret_draws_are_the_os_csprngs_bytes(monkeypatch):
    """Every uniform of a secret stream is 53 bits of os.urandom, every Gaussian Box-Muller on two of them: the
    Poisson mask and the noise carry the OS generator's entropy, with no seed anywhere to brute-force."""
    drawn = []
    monkeypatch.setattr(dp.os, "urandom", lambda n: drawn.append(n) or hashlib.shake_256(b"os").digest(n))

    def uniforms(n):  # what n uniforms made of those bytes must be
        return (np.frombuffer(hashlib.shake_256(b"os").digest(8 * n), np.uint64) >> np.uint64(11)) * 2.0 ** -53

    stream = dp.SecretStream()
    assert np.array_equal(stream.uniform(5), uniforms(5)) and drawn == [40]
    u = uniforms(1)
    assert np.array_equal(stream.normal(1), np.sqrt(-2 * np.log(1 - u)) * np.cos(2 * np.pi * u))
    assert drawn[1:] == [8, 8]
    assert dp.poisson_batch(5, 0.5, stream).tolist() == np.flatnonzero(uniforms(5) < 0.5).tolist()


def test_secret_noise_has_the_planned_spread_and_differs_between_alike_runs():
    """Two DP steps seeded alike ("secret" ignores the seed) add different noise, each N(0, sigma^2 C^2)."""
    grads = []
    for _ in range(2):  # 60,000 draws each: the spread is known to 0.3%, so the 5% bounds never fail by chance
        weight = torch.nn.Parameter(torch.zeros(200, 300))
        plan = dp.DPPlan(8.0, 1e-5, 2.0, 0.5, 4.0 / 100, 1, 100)
        optimizer, _ = dp.optimizer(weight, torch.optim.SGD([weight], lr=1.0), plan, dp.streams("secret", 0)[1])
        dp.set_grad_sample(weight, weight.new_zeros((0, 200, 300)))
        optimizer.step()
        grads.append(weight.grad.clone())
    assert not torch.equal(*grads)
    assert all(g.std().item() == pytest.approx(2.0 * 0.5 / 4.0, rel=0.05) for g in grads)
    assert all(abs(g.mean().item()) < 0.01 for g in grads)


def test_a_secret_dp_run_never_seeds_a_generator(tiny, monkeypatch):
    """A DP prompt with secret randomness draws its batches and noise from os.urandom only: no torch or numpy
    generator is seeded (or drawn from) on the way, whatever seed the run is given."""
    from post.config import load_config
    from post.tune import tune_prompt

    task = get_task("rotten_tomatoes")  # two classes
    train, model, tok = load_split(task.name, "train", 16), *tiny  # the fixed split is seeded: read it first

    def refuse(*args, **kwargs):
        raise AssertionError("a DP run with secret randomness seeded a non-cryptographic generator")

    for owner, name in ((torch, "Generator"), (torch, "manual_seed"), (torch, "rand"),
                        (torch, "normal"), (torch, "randperm"), (np.random, "default_rng"),
                        (np.random, "SeedSequence"), (np.random, "PCG64"), (np.random, "seed")):
        monkeypatch.setattr(owner, name, refuse)
    drawn = []
    urandom = dp.os.urandom
    monkeypatch.setattr(dp.os, "urandom", lambda n: drawn.append(n) or urandom(n))
    settings = dataclasses.replace(load_config("smoke").tune, batch_size=4, dp_randomness="secret", eval_every=0)
    prompt = tune_prompt(model, tok, task, train, settings, 8.0, 3, seed=7,
                         progress=False)
    assert prompt.meta["dp"]["randomness"] == "secret" and prompt.meta["dp"]["steps_taken"] == 3
    weights = prompt.weight.numel()
    assert drawn.count(8 * 16) == 3  # each step's Poisson mask: one uniform per training example
    assert drawn.count(8 * weights) == 3 * 4 * 2  # each step's noise: four Gaussians of two uniforms per number


def test_a_step_without_noise_spends_infinite_epsilon():
    weight = torch.nn.Parameter(torch.zeros(2, 3))
    _, accountant = _dp_step(weight, torch.ones(1, 2, 3), sigma=0.0, clip=1.0, expected=1.0)
    assert dp.spent(accountant, 1e-5) == {"prv_epsilon": math.inf, "rdp_epsilon": math.inf, "steps_taken": 1}
    assert dp.spent(PRVAccountant(), 1e-5)["prv_epsilon"] == 0.0


def test_grad_sample_shape_is_checked():
    with pytest.raises(ValueError, match="batch dimension"):
        dp.set_grad_sample(torch.nn.Parameter(torch.zeros(3, 4)), torch.zeros(3, 4))


def test_delta_is_well_below_one_over_n():
    assert dp.target_delta(1_000) == 1e-5
    assert dp.target_delta(1_000_000) == pytest.approx(1e-7)
    with pytest.raises(ValueError):
        dp.target_delta(0)


@pytest.mark.parametrize("epsilon", [8.0, 1.0])
def test_calibrated_noise_meets_the_target_and_is_tight(epsilon):
    plan = dp.plan(epsilon, n=3000, batch_size=32, steps=200, max_grad_norm=1.0)
    assert plan.delta == 1e-5 and plan.expected_batch_size == pytest.approx(32)
    accountant = PRVAccountant()
    for _ in range(plan.steps):
        accountant.step(noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate)
    spent = dp.spent(accountant, plan.delta)
    assert spent["steps_taken"] == 200
    assert epsilon * 0.9 < spent["prv_epsilon"] <= epsilon  # calibrated, not just any large sigma
    assert spent["rdp_epsilon"] >= spent["prv_epsilon"]  # RDP is the looser cross-check
    weaker = dp.DPPlan(epsilon, plan.delta, plan.noise_multiplier * 0.8, 1.0, plan.sample_rate, 200, 3000)
    accountant.history = [(weaker.noise_multiplier, weaker.sample_rate, 200)]
    assert dp.spent(accountant, plan.delta)["prv_epsilon"] > epsilon


def test_plan_rejects_bad_input():
    for kwargs in [dict(epsilon=math.inf), dict(epsilon=0.0), dict(batch_size=0), dict(batch_size=101),
                   dict(steps=0), dict(max_grad_norm=0.0)]:
        args = dict(epsilon=8.0, n=100, batch_size=10, steps=10, max_grad_norm=1.0) | kwargs
        with pytest.raises(ValueError):
            dp.plan(**args)


def test_the_claim_check_reads_the_same_epsilon_that_spent_reports():
    """prv_epsilon (checked at every prompt load) skips spent()'s RDP cross-check but not its answer."""
    dp.prv_epsilon.cache_clear()
    for sigma, q, steps in ((0.9, 0.02, 40), (0.0, 0.02, 5), (0.9, 0.02, 0)):
        accountant = PRVAccountant()
        accountant.history = [(sigma, q, steps)] if steps else []
        assert dp.prv_epsilon(sigma, q, steps, 1e-5) == dp.spent(accountant, 1e-5)["prv_epsilon"]
