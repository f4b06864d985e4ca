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


def plateaued(losses: list[float], patience: int) -> bool:
    """True once the last ``patience`` losses are none below the best before them: more steps stopped paying.

    ``patience`` 0 never stops. Training loops pass the losses of their evaluations (a held-out loss, or a
    negated accuracy) and keep the step with the best one.
    """
    return patience > 0 and len(losses) > patience and min(losses[-patience:]) >= min(losses[:-patience])


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


# --- projecting to the paper's settings ---------------------------------------------------------------------


@dataclass(frozen=True)
class Architecture:
    """What a decoder's FLOPs per token depend on: its layers, their parameters, and the LM head's size."""

    name: str
    layers: int
    layer_params: int  # parameters of one decoder layer
    width: int
    vocab: int

    @classmethod
    def of(cls, model, name: str = "") -> "Architecture":
        """Read off a loaded (or meta-device) causal LM."""
        from .student import layer_list  # the one place that knows where a decoder keeps its layers

        _, blocks = layer_list(model)
        return cls(name or model.config.name_or_path, len(blocks), n_params(blocks[0]),
                   model.get_input_embeddings().weight.shape[1], model.get_output_embeddings().weight.shape[0])

    def forward_flops(self, tokens: float, examples: float, layers: int | None = None) -> float:
        """One forward pass: 2 FLOPs per layer parameter per token, and the LM head at one read-out position
        per example (prompt tuning and transfer read one next-token distribution)."""
        return 2 * (layers or self.layers) * self.layer_params * tokens + 2 * self.width * self.vocab * examples


# decoder-layer parameters from the models' configurations (tests check them against transformers' own classes)
GPT2_XL = Architecture("gpt2-xl", 48, 12 * 1600 ** 2 + 13 * 1600, 1600, 50257)
LLAMA2_7B = Architecture("Llama-2-7b", 32, 4 * 4096 ** 2 + 3 * 4096 * 11008 + 2 * 4096, 4096, 32000)


@dataclass(frozen=True)
class Workload:
    """The paper's sst2 setting: prompt tuning for some epochs, then a transfer of fixed steps on public text."""

    train_examples: int = 67349  # sst2 train
    text_tokens: float = 32.0  # mean tokens per templated example
    prompt_length: int = 100
    epochs: int = 5
    transfer_steps: int = 6000
    transfer_batch: int = 64
    public_examples: int = 6000 * 64  # distinct public texts (each needs the constant terms once)


def projected_costs(target: Architecture, source_layers: int, work: Workload = Workload()) -> dict[str, float]:
    """FLOPs of FullPT, CompPT, the POST transfer and their ratio, for ``target`` and a ``source_layers`` source.

    A prompt-tuning step is a forward pass plus a backward pass to the inputs (about two forwards); the transfer
    adds, once per public text, the prompted and plain source passes and the plain target pass (the constants).
    """
    tokens = work.text_tokens + work.prompt_length
    seen = work.train_examples * work.epochs

    def tune(layers: int, examples: float) -> float:
        return 3 * target.forward_flops(tokens * examples, examples, layers)

    full = tune(target.layers, seen)
    compt = tune(source_layers, seen)
    constants = (target.forward_flops(tokens * work.public_examples, work.public_examples, source_layers)
                 + target.forward_flops(work.text_tokens * work.public_examples, work.public_examples, source_layers)
                 + target.forward_flops(work.text_tokens * work.public_examples, work.public_examples))
    transfer = tune(target.layers, work.transfer_steps * work.transfer_batch) + constants
    return {"fullpt": full, "compt": compt, "transfer": transfer, "post": compt + transfer,
            "ratio": full / (compt + transfer)}
