"""DP-SGD for a soft prompt: Poisson sampling, exact per-sample gradients; opacus clips, adds noise, accounts.

Why not peft's prompt tuning under opacus' hooks: the prompt is one (P, D) parameter shared by every example,
and a wrapper that computes it once per batch shows opacus a batch of one, so it clips the *batch* gradient
as if it were one example. Here each example gets its own copy of the prompt, shape (B, P, D), that
requires grad; one backward pass of the summed loss then yields every example's own gradient in dimension 0,
which goes into ``weight.grad_sample`` exactly where opacus' ``DPOptimizer`` expects what its hooks would
have written (gradients of each example's loss, batch first). ``DPOptimizer`` clips each to
``max_grad_norm``, sums, adds N(0, sigma^2 C^2) noise and divides by the expected batch size q*N.

Privacy: the noise multiplier is calibrated with the PRV accountant to a target (epsilon, delta) for the
planned sampling rate and number of steps; the same PRV accountant tracks the steps actually taken, and an
RDP accountant over the same history is reported as a cross-check (RDP is looser, so its epsilon is larger).

The guarantee also needs randomness nobody can replay: with a known seed, rerunning the training with and
without an example tells which one made the released prompt, and known batches undo the subsampling the
accountant counts on. So a release draws every Poisson mask and every noise value from the operating system's
cryptographic generator (``os.urandom``): there is no seed, nothing to brute-force and nothing to store. A
seeded stream (numpy's PCG64) exists for tests and debugging; its prompts are stamped as not private. The noise
is a sum of four Gaussians halved, as in opacus' secure mode, against floating-point attacks.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
import torch
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.utils import get_noise_multiplier
from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed


RDP_ORDERS = RDPAccountant.DEFAULT_ALPHAS + list(range(64, 257, 8))  # large epsilons need large orders
NOT_PRIVATE = "reproducible_not_private"  # the stamp of a seeded DP prompt: anyone with the seed can replay it


@contextmanager
def _quiet_prv_domain():
    """The PRV accountant sizes its domain with a coarse internal RDP bound that warns about its own orders
    (a larger domain only costs time); that warning says nothing about the epsilon reported here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        yield


def target_delta(n: int) -> float:
    """delta = min(1e-5, 1/(10 N)): well below the 1/N at which a mechanism may leak one example outright."""
    if n <= 0:
        raise ValueError(f"need a non-empty training set, got N={n}")
    return min(1e-5, 1.0 / (10 * n))


@dataclass(frozen=True)
class DPPlan:
    """Everything that determines the guarantee; recorded with the prompt."""

    epsilon: float  # target
    delta: float
    noise_multiplier: float  # sigma: noise std is sigma * max_grad_norm on the summed clipped gradient
    max_grad_norm: float  # C
    sample_rate: float  # q: each example joins each batch independently with probability q
    steps: int
    n: int  # training-set size
    accountant: str = "prv"

    @property
    def expected_batch_size(self) -> float:
        return self.sample_rate * self.n

    def to_dict(self) -> dict:
        return asdict(self)


@functools.lru_cache(maxsize=256)  # calibration is deterministic and costs ~0.3 s; shadows and reruns repeat it
def plan(epsilon: float, n: int, batch_size: int, steps: int, max_grad_norm: float) -> DPPlan:
    """Calibrate sigma so that ``steps`` Poisson-sampled steps of expected size ``batch_size`` reach epsilon."""
    if not (0 < epsilon < math.inf):
        raise ValueError(f"a DP plan needs a finite positive epsilon, got {epsilon}")
    if not 0 < batch_size <= n:
        raise ValueError(f"expected batch size must be in 1..N={n}, got {batch_size}")
    if steps <= 0 or max_grad_norm <= 0:
        raise ValueError(f"need steps > 0 and max_grad_norm > 0, got {steps} and {max_grad_norm}")
    delta, q = target_delta(n), batch_size / n
    try:
        with _quiet_prv_domain():
            sigma = get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=q, steps=steps,
                                         accountant="prv")
    except ValueError:  # opacus: "The privacy budget is too low."
        raise ValueError(f"epsilon {epsilon:g} is too small to calibrate: no noise multiplier opacus searches gives "
                         f"it at delta {delta:.2g} over {steps} steps sampling q = {q:.3g}; use a larger epsilon "
                         "(the study uses 1 to 8)") from None
    return DPPlan(epsilon, delta, sigma, max_grad_norm, q, steps, n)


class SecretStream:
    """Uniforms and Gaussians from the OS's cryptographic generator: what a DP release samples and noises with.

    A uniform is 53 random bits of ``os.urandom`` over 2^53; a Gaussian is Box-Muller on two of them, in float64.
    """

    def uniform(self, n: int) -> np.ndarray:
        return (np.frombuffer(os.urandom(8 * n), dtype=np.uint64) >> np.uint64(11)) * 2.0 ** -53

    def normal(self, n: int) -> np.ndarray:
        u, v = 1.0 - self.uniform(n), self.uniform(n)  # 1 - u lies in (0, 1]: the log is finite
        return np.sqrt(-2.0 * np.log(u)) * np.cos(2.0 * np.pi * v)


class SeededStream:
    """The same draws from numpy's PCG64 seeded with ``seed``: replayable, so for tests and debugging only."""

    def __init__(self, seed: int):
        self.rng = np.random.Generator(np.random.PCG64(seed))

    def uniform(self, n: int) -> np.ndarray:
        return self.rng.random(n)

    def normal(self, n: int) -> np.ndarray:
        return self.rng.standard_normal(n)


Stream = SecretStream | SeededStream


def streams(randomness: str, seed: int = 0) -> tuple[Stream, Stream]:
    """(sampler, noise) streams: "secret" draws from the OS's CSPRNG (no seed at all), "seeded" from ``seed``.

    Seeded streams come from ``numpy.random.SeedSequence(seed)``, so different seeds never share a stream
    (seed k's noise is not seed k + 1's sampler).
    """
    if randomness == "secret":
        return SecretStream(), SecretStream()
    if randomness == "seeded":
        return tuple(SeededStream(s) for s in np.random.SeedSequence(seed).spawn(2))
    raise ValueError(f"DP randomness is 'secret' or 'seeded' (tune.dp_randomness), got {randomness!r}")


def poisson_batch(n: int, sample_rate: float, stream: Stream) -> torch.Tensor:
    """Indices of one Poisson-sampled batch: every example independently with probability q (may be empty)."""
    return torch.from_numpy(np.flatnonzero(stream.uniform(n) < sample_rate))


class NoisyOptimizer(DPOptimizer):
    """opacus' DPOptimizer (clipping, summing, scaling, its step hooks) with the noise drawn from a ``Stream``."""

    def __init__(self, *args, stream: Stream, **kwargs):
        super().__init__(*args, **kwargs)
        self.stream = stream

    def add_noise(self) -> None:
        std = self.noise_multiplier * self.max_grad_norm
        for p in self.params:
            _check_processed_flag(p.summed_grad)  # opacus' guard: a clipped sum is noised once, then zeroed
            shape = p.summed_grad.shape
            draws = sum(self.stream.normal(shape.numel()) for _ in range(4)) / 2  # N(0, 1), as opacus' secure mode
            noise = torch.from_numpy(draws * std).reshape(shape).to(p.summed_grad)
            p.grad = (p.summed_grad + noise).view_as(p)
            _mark_as_processed(p.summed_grad)


def optimizer(param: torch.nn.Parameter, base: torch.optim.Optimizer, dp: DPPlan,
              stream: Stream) -> tuple[DPOptimizer, PRVAccountant]:
    """Wrap ``base`` (e.g. Adam over ``param``) in a DP optimizer whose noise comes from ``stream``, with a PRV
    accountant on its steps."""
    # opacus' per-step hook counts steps; the expected batch size is the mean's denominator (Poisson sizes vary)
    dp_optimizer = NoisyOptimizer(base, noise_multiplier=dp.noise_multiplier, max_grad_norm=dp.max_grad_norm,
                                  expected_batch_size=dp.expected_batch_size, loss_reduction="mean", stream=stream)
    accountant = PRVAccountant()
    dp_optimizer.attach_step_hook(accountant.get_optimizer_hook_fn(dp.sample_rate))
    return dp_optimizer, accountant


def set_grad_sample(param: torch.nn.Parameter, grad_sample: torch.Tensor) -> None:
    """Hand per-sample gradients (B, *param.shape) to DPOptimizer; B = 0 (an empty Poisson batch) is valid."""
    if grad_sample.shape[1:] != param.shape:
        raise ValueError(f"per-sample gradients {tuple(grad_sample.shape)} do not match parameter "
                         f"{tuple(param.shape)} with a batch dimension in front")
    param.grad_sample = grad_sample.detach()


def spent(accountant: PRVAccountant, delta: float) -> dict:
    """Epsilon actually spent after the recorded steps: PRV (the guarantee) and RDP (cross-check).

    No steps spend nothing; a step without noise (sigma = 0) guarantees nothing, so epsilon is infinite.
    """
    taken = sum(steps for _, _, steps in accountant.history)
    epsilon = _without_accountant(accountant.history)
    if epsilon is not None:
        return {"prv_epsilon": epsilon, "rdp_epsilon": epsilon, "steps_taken": taken}
    rdp = RDPAccountant()
    rdp.history = list(accountant.history)
    return {"prv_epsilon": _prv(accountant, delta), "rdp_epsilon": float(rdp.get_epsilon(delta, alphas=RDP_ORDERS)),
            "steps_taken": taken}


def _without_accountant(history: list[tuple[float, float, int]]) -> float | None:
    """Epsilon where no accountant is needed: 0 after no steps, inf after a step without noise; else None."""
    taken = sum(steps for _, _, steps in history)
    if not taken or any(sigma == 0 for sigma, _, _ in history):
        return math.inf if taken else 0.0
    return None


def _prv(accountant: PRVAccountant, delta: float) -> float:
    with _quiet_prv_domain():
        return float(accountant.get_epsilon(delta))


@functools.lru_cache(maxsize=256)  # prompts are checked each time they are loaded; the accountant costs ~0.3 s
def prv_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """Epsilon of ``steps`` Poisson-sampled steps at (sigma, q) and ``delta`` by the PRV accountant, as ``spent``
    reports it: how a prompt's stated guarantee is checked against its own DP record."""
    history = [(noise_multiplier, sample_rate, steps)]
    epsilon = _without_accountant(history)
    if epsilon is not None:
        return epsilon
    accountant = PRVAccountant()
    accountant.history = history
    return _prv(accountant, delta)  # without spent()'s RDP cross-check, which costs several times more


def clipped_norms(optimizer: DPOptimizer, param: torch.nn.Parameter, grad_sample: torch.Tensor) -> torch.Tensor:
    """(B,) norms of the per-example gradients after opacus' clipping to C (for showing what clipping does).

    Each example goes alone through the optimizer's own ``clip_and_accumulate``; nothing is kept or stepped.
    """
    norms = []
    for one in grad_sample:
        set_grad_sample(param, one[None])
        optimizer.clip_and_accumulate()
        norms.append(param.summed_grad.norm())
        optimizer.zero_grad()
    return torch.stack(norms)


def traced_step(optimizer: DPOptimizer, param: torch.nn.Parameter) -> dict[str, torch.Tensor]:
    """``optimizer.step()`` after ``set_grad_sample``, and what it made on the way (for showing one step).

    ``clipped_sum``: the sum of the clipped per-example gradients; ``noise``: the N(0, sigma^2 C^2) draw added
    to it; ``noisy_mean``: (sum + noise) / (q N), what the base optimizer steps with; ``update``: the change
    of ``param``.
    """
    before = param.detach().clone()
    optimizer.step()
    clipped_sum, noisy_mean = param.summed_grad.detach().clone(), param.grad.detach().clone()
    return {"clipped_sum": clipped_sum, "noise": noisy_mean * optimizer.expected_batch_size - clipped_sum,
            "noisy_mean": noisy_mean, "update": param.detach() - before}
