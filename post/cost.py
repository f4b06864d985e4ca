"""Cost records: wall time, examples, tokens and an analytic FLOPs estimate, kept with every artifact.

FLOPs use the standard dense-transformer estimate of 2 * parameters per token for a forward pass. A backward
pass that needs gradients only for the inputs (prompt tuning, transfer: the model is frozen) costs about one
more forward (2N); one that also needs weight gradients (distillation) costs about two more (4N).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

PASS_FLOPS = {"forward": 2, "input_grad": 4, "full": 6}  # FLOPs per parameter per token


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass
class Cost:
    wall_seconds: float = 0.0
    examples: int = 0
    tokens: int = 0
    flops: float = 0.0

    def add(self, model, tokens: int, examples: int = 0, kind: str = "forward") -> None:
        """Count ``tokens`` processed by ``model`` in a pass of ``kind`` (forward/input_grad/full)."""
        self.tokens += int(tokens)
        self.examples += int(examples)
        self.flops += PASS_FLOPS[kind] * n_params(model) * int(tokens)

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(*(a + b for a, b in zip(asdict(self).values(), asdict(other).values())))

    def to_dict(self) -> dict:
        return asdict(self)


class Timer:
    """``with Timer() as t: ...``; ``t.seconds`` afterwards (and while running)."""

    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        self.end = None
        return self

    def __exit__(self, *exc) -> None:
        self.end = time.perf_counter()

    @property
    def seconds(self) -> float:
        return (self.end or time.perf_counter()) - self.start
