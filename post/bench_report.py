"""RESULTS.md's sections on the benchmarks, read from ``bench/results/`` (written by ``bench/*.py``): the map of
sources and its control, how long the transfer should run, DP results over repeats, and the speed checks.

Apart from :mod:`post.report`, which writes both generated blocks from ``results/<profile>/``: these sections
come from the benchmarks' own files, not from a profile's run, and each is left out while its file is missing.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from .artifacts import METHODS
from .files import read_json
from .tables import markdown_table, recovery_share


def dp_repeats(bench: Path, profile: str) -> list[str]:
    """``bench/dp_repeats.py``: how far one DP release with secret randomness can land from another."""
    path = bench / "dp_repeats.json"
    d = read_json(path) if path.exists() else {}
    if d.get("profile") != profile or "summary" not in d:
        return []
    table = pd.DataFrame(d["summary"])[["epsilon", "published", "repeats", "mean", "sd", "min", "max"]].rename(
        columns={"published": "02's release then"})
    return ["### DP results over repeats",
            f"`python bench/dp_repeats.py` (`bench/results/dp_repeats.json`): CompPT on {d['task']} tuned again as 02 "
            "tunes it, each time with fresh secret randomness, scored on the test split. 02's release is one such "
            "draw (the column is the release of the 02 run the repeats were made beside, not necessarily the one in "
            "the tables above):", markdown_table(table)]


def benchmarks(bench: Path) -> list[str]:
    lines = []
    if (bench / "forward_throughput.json").exists():
        f = read_json(bench / "forward_throughput.json")
        lines += [f"- `python bench/forward_throughput.py`: the target's forward on {r['batch']}x{r['seq']} tokens runs "
                  f"at {r['gflops_per_s']:.0f} GFLOP/s, {share:.2f} of the fp32 matmul peak measured in the same run."
                  for r, share in zip(f["forward"], f["fraction_of_matmul_peak"])]
    if (bench / "dp_step.json").exists():
        d = read_json(bench / "dp_step.json")
        hooks = d.get("opacus_hooks_over_plain")
        lines.append(f"- `python bench/dp_step.py`: a DP-SGD step on the {d['layers']}-layer source (batch {d['batch']}, "
                     f"{d['precision']}) takes {d['dp_over_plain']:.2f}x the time of a non-private step "
                     f"({d['dp_over_plain_cpu_time']:.2f}x in CPU time; goal <= {d['goal_dp_over_plain']})"
                     + (f"; opacus' hook-based GradSampleModule: {hooks:.2f}x" if hooks else "") + ".")
    if (bench / "source_steerability.json").exists():
        d = read_json(bench / "source_steerability.json")
        lines.append(f"- `python bench/source_steerability.py`: validation accuracy on {d['task']} without -> with a "
                     f"prompt tuned for {d['steps']} steps (majority class {d['validation_majority']:.3f}): "
                     + "; ".join(f"{r['model']} {r['validation_zero_shot']:.3f} -> {r['validation_prompted']:.3f}"
                                 for r in d["rows"]) + ".")
    if (bench / "stage_profile.json").exists():
        s = read_json(bench / "stage_profile.json")
        cpu = "avx512_bf16" if s["machine"]["avx512_bf16"] else f"{s['machine']['cpu_capability']}, no avx512_bf16"
        kinds = s["kinds"]
        lines.append(f"- `{s['command']}` ({cpu}, {s['machine']['threads']} threads): each kind of stage work as a "
                     "fraction of the matmul peak measured in the same run, in its precision (FLOPs by post.cost's "
                     "count, which charges the embedding lookup as a matmul: 1.3x too many on the target, 1.6x on "
                     "the source; and the share of padding tokens): " + "; ".join(
                         f"{name} {(k.get('per_step') or k)['fraction_of_peak']:.2f} ({k['precision']}, "
                         f"{k['padding_share']:.0%} padding)" for name, k in kinds.items()) + ".")
    return ["### Benchmarks", "Speed targets, and what bounds POST here, are checked by benchmarks that write JSON "
            "to `bench/results/`:", "\n".join(lines)] if lines else []


def source_map(bench: Path) -> list[str]:
    """The source sweep (``bench/source_sweep.py``): what each source shape and distillation gives POST."""
    if not (bench / "source_sweep.json").exists():
        return []
    d = read_json(bench / "source_sweep.json")
    ref, settings = d["reference"], d["settings"]
    rows = pd.DataFrame([{"source": f"first {p['first']} + last {p['last']}", "layers": p["layers"],
                          "distillation": p["mode"], "step cost / target": p["step_ratio"],
                          "read-out KL": p["readout_agreement"]["kl"], "zero-shot": p["source_zero_shot"],
                          **{METHODS[key].label: p[key] for key in ("compt", "direct", "post")},
                          "transfer": f"{p['transfer_space']}, {p['transfer_steps']} steps",
                          "POST step": p["post_selected_step"], "recovery": p["recovery"]} for p in d["points"]])
    parts = ["### How much source does a prompt transfer need? (the map)",
             f"`python bench/source_sweep.py` (`bench/results/source_sweep.json`, `figures/cpu/source_sweep.png`): "
             f"{settings['task']} validation ({settings['validation']} examples; the test split is not read), prompts "
             f"tuned {settings['steps']} steps, POST on public reviews in batches of "
             f"{settings['transfer']['batch_size']}, in the vocabulary or in the label words' space (`transfer.space`; "
             "a source's CompPT and Direct do not depend on it). Target: zero-shot "
             f"{ref['zero_shot']:.3f}, "
             f"FullPT {ref['fullpt']:.3f} (majority class {ref['majority']:.3f}). Read-out distillation uses "
             f"{settings['readout_examples']} public reviews in the task's template for {settings['readout_epochs']} "
             "epochs; step cost is a prompt-tuning step's wall time on the source over the target's in the same run"
             f"{_step_cost_spread(d['points'])}.",
             markdown_table(rows)]
    return parts + _levers(d)


def _levers(d: dict) -> list[str]:
    """The transfer variants run on one source of a sweep (``--levers``), each on the owner seeds' prompts."""
    if "levers" not in d:
        return []
    lev, seed = d["levers"], d["settings"]["seed"]
    rows = pd.DataFrame([{"variant": r["variant"], "owner seed": r.get("owner_seed", seed),
                          "CompPT": r.get("compt", lev.get("compt")), "Direct": r.get("direct", lev.get("direct")),
                          "Direct AUC": r.get("direct_auc"), "POST": r["post"], "POST AUC": r.get("post_auc"),
                          "step": r["post_selected_step"], "POST last": r["post_last"], "last step": r["post_last_step"],
                          "recovery": r["recovery"]} for r in lev["runs"]]).dropna(axis=1, how="all")
    shape, mode = lev["point"].rsplit("-", 1)
    same = d["settings"]["transfer"]  # the points of that source whose transfer is the one the variants change
    base = [p["post"] for p in d["points"] if (p["shape"], p["mode"], p["transfer_space"], p["transfer_steps"])
            == (shape, mode, same.get("space", "vocab"), same["steps"])]  # before spaces: the vocabulary
    means = "; ".join(f"{variant} {post:.3f}" for variant, post in rows.groupby("variant", sort=False)["POST"].mean().items())
    return [f"Transfer levers on the {lev['point']} source (`--levers`, the profile's transfer with one change each). "
            f"Mean POST over the owner seeds: {means}"
            + (f"; the profile's transfer on the same source (the points above): {np.mean(base):.3f}." if base else "."),
            markdown_table(rows)]


def source_control(bench: Path, name: str = "source_sweep_val1275") -> list[str]:
    """The map's key sources again on the whole validation split, each with the control transfer: POST of the
    owner's starting prompt (the public instruction, no private step)."""
    if not (bench / f"{name}.json").exists():
        return []
    d = read_json(bench / f"{name}.json")
    ref, settings = d["reference"], d["settings"]
    seed = lambda p: p.get("owner_seed", settings["seed"])  # noqa: E731  (points before seeds: the profile's)
    points = sorted(d["points"], key=lambda p: (p["layers"], p["first"], p["mode"], seed(p)))
    rows = pd.DataFrame([{"source": f"first {p['first']} + last {p['last']}", "layers": p["layers"],
                          "distillation": p["mode"], "transfer": p["transfer_space"], "owner seed": seed(p),
                          "step cost / target": p["step_ratio"],
                          "CompPT": p["compt"], "source AUC: zero-shot / prompted":
                              f"{p['source_auc']:.3f} / {p['compt_auc']:.3f}" if p.get("compt_auc") else None,
                          "Direct": p["direct"],
                          "instruction on target": p.get("instruction_target"),
                          "control: the instruction transferred": p.get("control_post"),
                          "the transfer's own effect (control - instruction)":
                              p["control_post"] - p["instruction_target"] if "control_post" in p else None,
                          "POST": p["post"], "POST AUC": p.get("post_auc"), "recovery": p["recovery"]}
                         for p in points])
    n, gain, post = settings["validation"], ref["fullpt"] - ref["zero_shot"], float(np.median(rows["POST"]))
    se = math.sqrt(post * (1 - post) / n) / gain  # sampling error of one POST accuracy, in recovery units
    return ["### Does the owner's prompt carry POST's gain? (the map on all of validation, with a control)",
            f"`python bench/source_sweep.py --validation {n} --out bench/results/{name}.json` "
            f"(`figures/cpu/{name}.png`) scores sources of {points[0]['layers']} to {points[-1]['layers']} layers "
            f"on {n} validation examples (sampling "
            f"standard error of one recovery about {se:.2f}) and adds a control: the owner's *starting* prompt, the "
            "public task instruction before any private step, transferred exactly as the tuned prompt is. The "
            "control's change from the instruction pasted onto the target is what the transfer does on its own "
            "(public text and the source); POST's lead over the control is what the owner's tuned prompt carries. "
            f"Target: zero-shot {ref['zero_shot']:.3f}, FullPT {ref['fullpt']:.3f}, majority class "
            f"{ref['majority']:.3f}." + _seed_spread(rows) + _threshold_only(ref),
            markdown_table(rows.drop(columns="transfer") if rows.transfer.nunique() == 1 else rows), *_levers(d)]


def _threshold_only(ref: dict) -> str:
    """What the target reaches by moving only its zero-shot threshold, where the sweep measured it."""
    if "threshold_oracle" not in ref:
        return ""
    share = recovery_share(ref["zero_shot"], ref["fullpt"], ref["threshold_oracle"])
    return (f" How much of that is the target's threshold? Its zero-shot class-score margin already orders the "
            f"reviews with AUC {ref['zero_shot_auc']:.3f}; moving only the threshold scores at best "
            f"{ref['threshold_oracle']:.3f} (recovery {share:.2f}: an oracle that reads the validation labels, a "
            f"diagnostic and never a choice), and centring the class scores on the unlabelled validation inputs "
            f"gives {ref['threshold_centred']:.3f}. AUC columns: how well a model orders the validation reviews "
            "whatever its threshold (source zero-shot / with the owner's prompt; the target with POST's prompt).")


def _seed_spread(rows: pd.DataFrame) -> str:
    """How far one source's Direct and POST move with the owner's tuning seed alone, where it has several."""
    text = ""
    for (source, mode, _), part in rows.groupby(["source", "distillation", "transfer"], sort=False):
        seeds = part["owner seed"].nunique()
        if seeds > 1:
            text += (f" With the owner's tuning seed as the only change (`--owner-seeds`, {seeds} seeds) on {source} "
                     f"({mode}), Direct ranges {part.Direct.min():.3f}-{part.Direct.max():.3f} and POST "
                     f"{part.POST.min():.3f}-{part.POST.max():.3f} (standard deviation {part.POST.std():.3f}).")
    return text


def transfer_length(bench: Path) -> list[str]:
    """The transfer run past 03's cap (``bench/transfer_length.py``): what its stopping rule keeps under each cap."""
    if not (bench / "transfer_length.json").exists():
        return []
    d = read_json(bench / "transfer_length.json")
    caps = " / ".join(str(rule["cap"]) for rule in d["rows"][0]["rules"])
    by_cap = lambda r, text: " / ".join(text(rule) for rule in r["rules"])  # noqa: E731
    rows = pd.DataFrame([{"task": r["task"], "zero-shot": r["validation_zero_shot"], "FullPT": r["validation_fullpt"],
                          "Direct": r["direct"],
                          f"kept step (stopped at), cap {caps}": by_cap(r, lambda x: f"{x['kept_step']} ({x['stopped_at']})"),
                          "POST kept": by_cap(r, lambda x: f"{x['validation_accuracy']:.3f}"),
                          "recovery": by_cap(r, lambda x: f"{x['validation_recovery']:.2f}"),
                          f"POST at step {d['steps']}": r["last"],
                          "best step on validation": f"{r['oracle_accuracy']:.3f} at {r['oracle_step']}"}
                         for r in d["rows"]])
    return ["### How long should the transfer run? (validation)",
            f"`python bench/transfer_length.py` (`bench/results/transfer_length.json`, "
            f"`figures/{d['profile']}/transfer_length.png`): the non-private CompPT prompt transferred as 03 does but "
            f"for {d['steps']} steps without stopping, a snapshot every {d['eval_every']}; each snapshot scored on "
            f"{d['validation_examples']} validation examples (step 0 is the source prompt pasted: Direct), and 03's rule (stop after {d['patience']} evaluations "
            f"without a lower held-out loss on {d['holdout_examples']} public texts, keep the lowest) replayed under "
            "each cap. The best step on validation is an oracle that needs private labels: it bounds what a better "
            "public selection could reach, and is never used.",
            markdown_table(rows)]


def _step_cost_spread(points: list[dict]) -> str:
    """How far apart one source's step costs measured in different runs lie, if any source was measured twice."""
    ratios = pd.DataFrame(points).groupby(["shape", "mode"]).step_ratio.agg(["min", "max"])
    if not (ratios["max"] > ratios["min"]).any():
        return ""
    widest = ratios.iloc[(ratios["max"] / ratios["min"]).argmax()]
    return (f" (noisy on a shared machine: one source measured {widest['min']:.2f} and {widest['max']:.2f} in two "
            "runs; the figure's x axis is the layer share)")
