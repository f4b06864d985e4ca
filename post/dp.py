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
accountant counts on. So a release draws its sampler and noise seeds from the operating system and never
stores them; a seeded mode exists for tests and debugging, and its prompts are stamped as not private. The
generators are torch's (Mersenne Twister, not a cryptographic generator: the secret is their 64-bit seeds),
and the noise is drawn in opacus' secure mode (a sum of Gaussians, against floating-point attacks).
"""

from __future__ import annotations

import functools
import math
import secrets
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
import torch
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.utils import get_noise_multiplier
from opacus.optimizers import DPOptimizer


RDP_ORDERS = RDPAccountant.DEFAULT_ALPHAS + list(range(64, 257, 8))  # large epsilons need large orders
RANDOMNESS = ("secret", "seeded")
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
    with _quiet_prv_domain():
        sigma = get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=q, steps=steps,
                                     accountant="prv")
    return DPPlan(epsilon, delta, sigma, max_grad_norm, q, steps, n)


def poisson_batch(n: int, sample_rate: float, generator: torch.Generator) -> torch.Tensor:
    """Indices of one Poisson-sampled batch: every example independently with probability q (may be empty)."""
    return torch.nonzero(torch.rand(n, generator=generator) < sample_rate).flatten()


def generators(randomness: str, seed: int = 0) -> tuple[torch.Generator, torch.Generator]:
    """(sampler, noise) generators: "secret" seeds them from the OS (values never kept), "seeded" from ``seed``.

    Seeded streams come from ``numpy.random.SeedSequence(seed)``, so different seeds never share a stream
    (seed k's noise is not seed k + 1's sampler).
    """
    if randomness == "secret":
        seeds = [secrets.randbits(64) for _ in range(2)]
    elif randomness == "seeded":
        seeds = np.random.SeedSequence(seed).generate_state(2, np.uint64).tolist()
    else:
        raise ValueError(f"DP randomness must be one of {RANDOMNESS}, got {randomness!r}")
    return torch.Generator().manual_seed(seeds[0]), torch.Generator().manual_seed(seeds[1])


def optimizer(param: torch.nn.Parameter, base: torch.optim.Optimizer, dp: DPPlan,
              generator: torch.Generator | None = None) -> tuple[DPOptimizer, PRVAccountant]:
    """Wrap ``base`` (e.g. Adam over ``param``) in opacus' DPOptimizer, with a PRV accountant on its steps."""
    # opacus' per-step hook counts steps; the expected batch size is the mean's denominator (Poisson sizes vary)
    dp_optimizer = DPOptimizer(base, noise_multiplier=dp.noise_multiplier, max_grad_norm=dp.max_grad_norm,
                               expected_batch_size=dp.expected_batch_size, loss_reduction="mean",
                               generator=generator, secure_mode=True)
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
    if not taken or any(sigma == 0 for sigma, _, _ in accountant.history):
        epsilon = math.inf if taken else 0.0
        return {"prv_epsilon": epsilon, "rdp_epsilon": epsilon, "steps_taken": taken}
    rdp = RDPAccountant()
    rdp.history = list(accountant.history)
    with _quiet_prv_domain():
        prv = accountant.get_epsilon(delta)
    return {"prv_epsilon": float(prv), "rdp_epsilon": float(rdp.get_epsilon(delta, alphas=RDP_ORDERS)),
            "steps_taken": taken}


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
