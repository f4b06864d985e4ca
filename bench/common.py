"""What the lever studies under bench/ share: where their JSON goes, redrawing a figure from it, and reading a
settings variant from the command line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable

from post.config import Config
from post.evaluate import owner_validation
from post.files import read_json
from post.tasks import Split, load_split

RESULTS = Path(__file__).parent / "results"


def as_stored(value):
    """``value`` as its JSON reads back (tuples become lists, floats stay floats), so a settings key saved with a
    result can be compared with the one a rerun builds: a bench that resumes must recognise its own settings."""
    return json.loads(json.dumps(value, default=str))


def parse_or_plot(parser: argparse.ArgumentParser, name: str, plot: Callable[[dict], object]):
    """Parse the command line with ``--out`` (default ``bench/results/<name>.json``) and ``--plot`` added.

    With ``--plot`` the figure is redrawn from ``--out`` and None is returned: the bench has nothing to run.
    """
    parser.add_argument("--out", default=str(RESULTS / f"{name}.json"))
    parser.add_argument("--plot", action="store_true", help="only draw the figure from --out")
    args = parser.parse_args()
    if args.plot:
        plot(read_json(Path(args.out)))
        return None
    return args


def variant(text: str) -> dict[str, str]:
    """``"key=value,key=value"`` as {key: value}, for ``Config.with_changes`` (which reads and checks each value);
    an empty variant changes nothing."""
    return dict(kv.split("=", 1) for kv in text.split(",") if kv)


def unseen_validation(cfg: Config, task: str, limit: int = 0) -> Split:
    """The validation examples after the prefix 02's selection reads (``owner_validation``), at most ``limit``
    (0: all): scores there are not flattered by the examples that chose the owner's step. ValueError if fewer
    than 100 remain, too few to judge a selection."""
    skip, everything = len(owner_validation(cfg, task) or []), load_split(task, "validation", 0)
    end = skip + limit if limit else None
    unseen = Split(everything.texts[skip:end], everything.labels[skip:end])
    if len(unseen.texts) < 100:
        raise ValueError(f"{task} has {len(unseen.texts)} validation examples beyond the {skip} the owner selects "
                         "on: too few to judge the selection")
    return unseen


def has_avx512_bf16() -> bool:
    """Whether the CPU has native bf16 instructions, without which bf16 autocast is far slower than fp32: every
    bench records it beside its timings."""
    cpuinfo = Path("/proc/cpuinfo")
    return cpuinfo.exists() and "avx512_bf16" in cpuinfo.read_text().split()
