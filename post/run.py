"""Run the study's notebooks for ``make``: one run per profile at a time, results in place only on success.

    python -m post.run PROFILE notebooks/01_distill.ipynb [notebooks/02_tune.ipynb ...]

- The profile is loaded and checked first: a mistyped name or a bad setting stops here, before anything is
  created and before any stage runs.
- A per-profile lock (``artifacts/<profile>/.lock``) refuses a second concurrent run; the OS drops it when its
  holder exits, however that happens, so it never goes stale.
- A notebook executes into ``artifacts/<profile>/notebooks/`` and moves to ``results/<profile>/notebooks/``
  only when it ran to the end: a failed run never replaces the last good executed notebook.
- A failure ends with one line, the stage's exception; the failed notebook, kept, has the traceback.
- SIGTERM, SIGHUP, SIGINT, and on Linux the death of ``make`` itself, end this process in an orderly way, and
  papermill's client shuts the kernel down on the way out: no stage keeps writing after ``make`` has stopped.
- Each stage's wall time replaces its line in ``results/<profile>/notebooks/wall_seconds.txt``.
- ``artifacts/<profile>/stages/<stage>.done``, the target by which ``make`` knows what is stale (see the
  Makefile), is removed when a stage starts and written, dated when it started, only when it ran to the end.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import nbformat
import papermill
from nbclient.exceptions import DeadKernelError

from . import artifacts, files
from .config import ConfigError, load_config

PR_SET_PDEATHSIG = 1  # linux/prctl.h


class StageFailed(RuntimeError):
    """A run that could not start or a notebook that did not run to the end; the message is the cause."""


@contextmanager
def profile_lock(profile: str, what: str = "") -> Iterator[None]:
    """Hold the profile's lock for the block, or refuse naming the run that holds it."""
    path = artifacts.artifact_dir(profile) / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise StageFailed(f"PROFILE={profile} is already running ({holder}); wait for it to finish, or stop "
                              "it, then run again") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}, {what or 'post.run'}, since {time.strftime('%H:%M:%S')}\n")
        f.flush()
        yield


def cause(err: papermill.PapermillExecutionError | DeadKernelError) -> str:
    """One line saying why a notebook stopped: the cell's exception, or the kernel's death."""
    if isinstance(err, DeadKernelError):
        return "the kernel died (killed by the system, often for lack of memory, or crashed)"
    return f"{err.ename}: {' '.join(str(err.evalue).split())}"


def execute(notebook: Path, profile: str) -> float:
    """Run ``notebook`` with ``profile``; on success move it into the results and return its wall seconds."""
    work = artifacts.artifact_dir(profile, "notebooks") / notebook.name
    work.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        papermill.execute_notebook(notebook, work, parameters={"profile": profile}, cwd=notebook.parent)
    except (papermill.PapermillExecutionError, DeadKernelError) as err:
        raise StageFailed(f"{notebook.stem} failed (PROFILE={profile}): {cause(err)}  "
                          f"[see {files.relative(work)}]") from None
    seconds = time.perf_counter() - start
    final = artifacts.RESULTS / profile / "notebooks" / notebook.name
    executed = nbformat.read(work, as_version=4)
    executed.metadata.papermill.update(  # committed notebooks hold no paths of the machine that ran them
        input_path=files.relative(notebook), output_path=final.relative_to(artifacts.RESULTS.parent).as_posix())
    with files.atomic_path(final) as tmp:
        nbformat.write(executed, tmp)
    work.unlink()
    return seconds


def stamp(profile: str, stage: str) -> Path:
    """The file whose presence and date tell make that ``stage`` ran to the end, and when it started."""
    return artifacts.artifact_dir(profile, "stages") / f"{stage}.done"


def mark_done(path: Path, started: float) -> None:
    """Write the stamp dated ``started``: an input edited while the stage ran is newer, so it is still stale."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    os.utime(path, (started, started))


def record_wall(profile: str, stage: str, seconds: float) -> None:
    """Replace ``stage``'s line in ``wall_seconds.txt``: one line per stage, its latest successful run."""
    path = artifacts.RESULTS / profile / "notebooks" / "wall_seconds.txt"
    lines = {}
    if path.exists():
        lines = dict(line.split(None, 1) for line in path.read_text().splitlines() if line.strip())
    lines[stage] = str(round(seconds))
    with files.atomic_path(path) as tmp:
        tmp.write_text("".join(f"{name} {lines[name]}\n" for name in sorted(lines)))


class Stopped(SystemExit):
    """A signal asked this run to stop: it unwinds through papermill, whose exit handler stops the kernel."""


def _stop(signum: int, frame) -> None:
    raise Stopped(128 + signum)


def main(argv: list[str] | None = None) -> int:
    profile, *notebooks = argv if argv is not None else sys.argv[1:]
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(signum, _stop)
    if sys.platform == "linux":  # make killed outright (SIGKILL) sends this process SIGTERM
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    try:
        load_config(profile)
        with profile_lock(profile, " ".join(Path(n).stem for n in notebooks)):
            for notebook in map(Path, notebooks):
                print(f"== {notebook.stem} (PROFILE={profile})", flush=True)
                done = stamp(profile, notebook.stem)
                done.unlink(missing_ok=True)  # a stage stopped halfway may have changed its artifacts
                started = time.time()
                seconds = execute(notebook, profile)
                record_wall(profile, notebook.stem, seconds)
                mark_done(done, started)
                print(f"== {notebook.stem} done in {seconds:.0f} s", flush=True)
    except ConfigError as err:
        print(f"PROFILE={profile}: {err}", file=sys.stderr)
        return 2
    except StageFailed as err:
        print(err, file=sys.stderr)
        return 1
    except Stopped as stop:
        print(f"PROFILE={profile}: stopped by {signal.Signals(stop.code - 128).name}; the running stage and its "
              "kernel are stopped, its notebook not moved into the results", file=sys.stderr)
        return stop.code
    return 0


if __name__ == "__main__":
    sys.exit(main())
