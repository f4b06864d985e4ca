"""What `make` does around a stage (post.run): it reruns exactly the stale stages, a mistyped profile creates
nothing, one run per profile at a time, a failed stage keeps the last good executed notebook and ends with its
one-line cause, and a stopped run stops its kernel. Small notebooks stand in for the stages, in a temporary
artifacts/results tree."""

import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import nbformat
import psutil
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from post import artifacts, run
from post.files import ROOT

pytestmark = pytest.mark.e2e  # make, papermill and Jupyter kernels, end to end
MAKE = ["make", "--no-print-directory", "-o", ".venv/.post-setup", f"PY={sys.executable}"]
RUNNER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from post import artifacts, run
    root = Path(sys.argv[1])
    artifacts.ARTIFACTS, artifacts.RESULTS = root / "artifacts", root / "results"
    sys.exit(run.main(sys.argv[2:]))
""")


def notebook(path, *cells):
    """A notebook with the study's parameters cell followed by ``cells``."""
    nb = new_notebook(cells=[new_code_cell('profile = "cpu"', metadata={"tags": ["parameters"]}),
                             *map(new_code_cell, cells)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def runner(root, *args, prefix=()):
    """``python -m post.run`` (``args``: profile, notebooks) writing under ``root``, as a child process."""
    command = [*prefix, sys.executable, "-c", RUNNER, str(root), *map(str, args)]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_for(path, timeout=90.0):
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text()):
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.2)
    return int(path.read_text())


STAGES = ["01_distill", "02_tune", "03_transfer", "04_evaluate", "05_privacy_audit"]


def planned(tree, *args) -> list[str]:
    """The stages `make -n reproduce PROFILE=smoke` would run in ``tree`` (a stand-in checkout), in order."""
    done = subprocess.run([*MAKE, "-n", "-C", str(tree), "-f", str(ROOT / "Makefile"), "reproduce", "PROFILE=smoke",
                           *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return re.findall(r"-m post\.run smoke notebooks/(\w+)\.ipynb", done.stdout)


def test_make_reruns_exactly_the_stale_stages(tmp_path):
    inputs = [*(f"notebooks/{stage}.ipynb" for stage in STAGES), "params/smoke.yaml", "post/tune.py"]
    for i, name in enumerate(inputs):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).touch()
        os.utime(tmp_path / name, (1000 + i, 1000 + i))
    assert planned(tmp_path) == STAGES  # a fresh clone: no artifacts, so no stamps
    stamps = tmp_path / "artifacts" / "smoke" / "stages"
    stamps.mkdir(parents=True)
    for i, stage in enumerate(STAGES):  # as one run of every stage leaves them
        (stamps / f"{stage}.done").touch()
        os.utime(stamps / f"{stage}.done", (2000 + i, 2000 + i))
    assert planned(tmp_path) == []
    assert planned(tmp_path, "-W", "notebooks/04_evaluate.ipynb") == ["04_evaluate"]
    assert planned(tmp_path, "-W", "notebooks/02_tune.ipynb") == ["02_tune", "03_transfer", "04_evaluate"]
    assert planned(tmp_path, "-W", "post/tune.py") == STAGES
    assert planned(tmp_path, "-W", "params/smoke.yaml") == STAGES
    assert planned(tmp_path, "FORCE=1") == STAGES
    (stamps / "03_transfer.done").unlink()  # its artifacts are gone
    assert planned(tmp_path) == ["03_transfer", "04_evaluate"]
    os.utime(stamps / "01_distill.done", (3000, 3000))  # `make distill` ran it alone since
    assert planned(tmp_path) == ["02_tune", "03_transfer", "04_evaluate", "05_privacy_audit"]


@pytest.mark.parametrize("target", ["tune", "reproduce"])
def test_a_mistyped_profile_stops_make_before_anything_is_created(target):
    done = subprocess.run([*MAKE, target, "PROFILE=smoek"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode != 0
    assert done.stderr.splitlines()[0].startswith("PROFILE=smoek: no profile 'smoek': params/smoek.yaml does not")
    assert not any((root / "smoek").exists() for root in (artifacts.ARTIFACTS, artifacts.RESULTS, artifacts.FIGURES))


def test_a_second_run_of_a_profile_is_refused(tmp_path, monkeypatch):
    with run.profile_lock("quick", "the first run"):
        started = time.monotonic()
        done = subprocess.run([*MAKE, "evaluate", "PROFILE=quick"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode != 0 and time.monotonic() - started < 60
    assert done.stderr.startswith("PROFILE=quick is already running (pid ")
    assert "the first run" in done.stderr.splitlines()[0] and "wait for it to finish" in done.stderr
    monkeypatch.setattr(artifacts, "ARTIFACTS", tmp_path)
    with run.profile_lock("smoke"):
        with pytest.raises(run.StageFailed, match="PROFILE=smoke is already running"):
            with run.profile_lock("smoke"):
                pass
    with run.profile_lock("smoke"):  # released when its holder is done
        pass


def test_a_failed_stage_keeps_the_last_good_notebook_and_ends_with_its_cause(tmp_path):
    stage = notebook(tmp_path / "02_stage.ipynb", "print('good run', profile)")
    first = runner(tmp_path, "smoke", stage)
    assert first.wait(timeout=180) == 0, first.communicate()
    executed = tmp_path / "results" / "smoke" / "notebooks" / "02_stage.ipynb"
    assert "good run smoke" in executed.read_text()
    assert '"output_path": "results/smoke/notebooks/02_stage.ipynb"' in executed.read_text()  # not this machine's
    stamp = tmp_path / "artifacts" / "smoke" / "stages" / "02_stage.done"  # what make goes by
    assert stamp.stat().st_mtime <= executed.stat().st_mtime  # dated when the stage started
    notebook(stage, "x = 1", "raise ValueError('tune.steps went wrong\\nwhile tuning')")
    second = runner(tmp_path, "smoke", stage)
    assert second.wait(timeout=180) == 1
    last = second.communicate()[1].splitlines()[-1]
    failed = tmp_path / "artifacts" / "smoke" / "notebooks" / "02_stage.ipynb"
    assert last == f"02_stage failed (PROFILE=smoke): ValueError: tune.steps went wrong while tuning  [see {failed}]"
    assert "good run smoke" in executed.read_text() and "tune.steps went wrong" in failed.read_text()
    assert not stamp.exists()  # so make runs the stage again
    assert (executed.parent / "wall_seconds.txt").read_text().split()[0] == "02_stage"


def test_a_dead_kernel_is_said_in_one_line(tmp_path):
    stage = notebook(tmp_path / "03_stage.ipynb", "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    process = runner(tmp_path, "smoke", stage)
    assert process.wait(timeout=180) == 1
    assert "03_stage failed (PROFILE=smoke): the kernel died" in process.communicate()[1].splitlines()[-1]
    assert not (tmp_path / "results" / "smoke" / "notebooks" / "03_stage.ipynb").exists()
    assert not (tmp_path / "artifacts" / "smoke" / "stages" / "03_stage.done").exists()


@pytest.mark.parametrize("how", ["SIGTERM to the run", "SIGKILL to make"])
def test_a_stopped_run_stops_its_kernel(tmp_path, how):
    """No stage keeps running (and writing) once the run has stopped, whether it was stopped itself or the make
    above it was killed outright: the kernel is gone by the time the run is."""
    pid_file = tmp_path / "kernel.pid"
    stage = notebook(tmp_path / "05_stage.ipynb",
                     f"import os, pathlib, time\npathlib.Path({str(pid_file)!r}).write_text(str(os.getpid()))",
                     "time.sleep(300)")
    if how == "SIGTERM to the run":
        process = runner(tmp_path, "smoke", stage)
        kernel = wait_for(pid_file)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 128 + signal.SIGTERM
        assert "stopped by SIGTERM" in process.communicate()[1].splitlines()[-1]
    else:  # a shell stands in for make: killed outright, it cannot pass anything on
        make = runner(tmp_path, "smoke", stage, prefix=("sh", "-c", '"$@"; true', "make"))
        kernel = wait_for(pid_file)
        process = psutil.Process(make.pid).children()[0]
        make.kill()
        make.wait(timeout=30)
        process.wait(timeout=30)
    assert gone(kernel), "the kernel outlived the run"
    assert not (tmp_path / "results" / "smoke" / "notebooks" / "05_stage.ipynb").exists()


MOVED_STAGES = textwrap.dedent("""
    import json, sys
    from post import distill, tables, transfer, tune
    from post.artifacts import RESULTS
    from post.config import load_config
    from post.files import ROOT
    assert str(ROOT) == sys.argv[1], (ROOT, sys.argv[1])  # the copy's own package, not the installed one
    cfg = load_config("smoke")
    if sys.argv[2] == "owner":
        distill.run_distill(cfg, progress=False)
        tune.run_tune(cfg, progress=False)
    else:
        tables.training_curves(json.loads((RESULTS / "smoke" / "tune.json").read_text()))
        transfer.run_transfer(cfg, progress=False)
""")


@pytest.mark.e2e
def test_a_moved_checkout_reruns_a_stage_from_its_own_files(tmp_path):
    """Distil and tune in one checkout, move it, then transfer: every path the later stage reads back (prompts in
    tune.json, the source model named in prompt metadata) must be relative, or it would reach the old place."""
    first, moved = tmp_path / "first", tmp_path / "moved"
    first.mkdir()
    for name in ("post", "params", "examples"):
        subprocess.run(["cp", "-r", str(ROOT / name), str(first / name)], check=True)
    (first / "artifacts").mkdir()
    (ROOT / "artifacts" / "cache").mkdir(parents=True, exist_ok=True)  # a fresh clone converts its weights there
    (first / "artifacts" / "cache").symlink_to(ROOT / "artifacts" / "cache")  # shared, as two checkouts may
    script = tmp_path / "stages.py"
    script.write_text(MOVED_STAGES)

    def stage(root, side):
        env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
        done = subprocess.run([sys.executable, str(script), str(root), side], cwd=root, env=env,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]

    stage(first, "owner")
    first.rename(moved)
    stage(moved, "provider")
    for written in (moved / "results" / "smoke").glob("*.json"):
        assert str(tmp_path) not in written.read_text(), f"{written.name} holds a path of the machine"
