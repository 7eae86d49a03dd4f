"""The lock-file GPU slot allocator, exercised by concurrent processes (no GPU needed)."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import stat
import subprocess
import time

import pytest
from conftest import REPO, SNAKEMAKE

from relightflow import gpu_slots as gs

CTX = mp.get_context("fork")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    for var in (*gs.SCHEDULER_VARS, "RELIGHTFLOW_GPUS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RELIGHTFLOW_GPU_LOCK_DIR", str(tmp_path / "locks"))


def _hold(n, total, hold_s, queue, barrier=None):
    with gs.gpu_slots(n, total=total, timeout=30, poll=0.02) as devices:
        start = time.monotonic()
        queue.put(("hold", os.getpid(), devices, os.environ["CUDA_VISIBLE_DEVICES"]))
        if barrier is not None:
            barrier.wait(timeout=30)
        time.sleep(hold_s)
        end = time.monotonic()
    queue.put(("span", devices, start, end))


def _hold_forever(total, queue):
    with gs.gpu_slots(1, total=total) as devices:
        queue.put(devices)
        time.sleep(600)


def _run(procs):
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0


def _drain(queue, kind):
    items = []
    while not queue.empty():
        item = queue.get()
        if item[0] == kind:
            items.append(item[1:])
    return items


def test_concurrent_holders_get_distinct_slots():
    queue, barrier = CTX.Queue(), CTX.Barrier(4)
    _run([CTX.Process(target=_hold, args=(1, 4, 0.05, queue, barrier)) for _ in range(4)])
    holds = _drain(queue, "hold")
    slots = [devices[0] for _pid, devices, _env in holds]
    assert sorted(slots) == ["0", "1", "2", "3"]  # all four held at the same time (barrier)
    assert all(env == ",".join(devices) for _pid, devices, env in holds)


def test_more_jobs_than_slots_never_share_a_slot():
    queue = CTX.Queue()
    _run([CTX.Process(target=_hold, args=(1, 3, 0.1, queue)) for _ in range(9)])
    spans = _drain(queue, "span")
    assert len(spans) == 9
    by_slot: dict[str, list[tuple[float, float]]] = {}
    for devices, start, end in spans:
        by_slot.setdefault(devices[0], []).append((start, end))
    for intervals in by_slot.values():
        intervals.sort()
        for (_s1, e1), (s2, _e2) in zip(intervals, intervals[1:], strict=False):
            assert s2 >= e1, "two jobs held the same slot at once"


def test_multi_gpu_job_takes_all_it_declares():
    with gs.gpu_slots(1, total=3) as one, gs.gpu_slots(2, total=3, lock_dir=gs.default_lock_dir()) as two:
        pass
    # nested call sees CUDA_VISIBLE_DEVICES from the outer one and does nothing
    assert one == ["0"] and two == ["0"]
    queue = CTX.Queue()
    _run([CTX.Process(target=_hold, args=(3, 3, 0.0, queue))])
    assert _drain(queue, "hold")[0][1] == ["0", "1", "2"]


def test_partial_allocation_is_all_or_nothing():
    queue = CTX.Queue()
    holder = CTX.Process(target=_hold_forever, args=(2, queue))
    holder.start()
    try:
        assert queue.get(timeout=30) == ["0"]
        with pytest.raises(TimeoutError), gs.gpu_slots(2, total=2, timeout=0.3, poll=0.05):
            pass
        assert gs.slot_holders(2) == {0: holder.pid, 1: None}  # the failed attempt released slot 1
    finally:
        holder.kill()
        holder.join()


def test_killed_holder_frees_its_slot():
    queue = CTX.Queue()
    holder = CTX.Process(target=_hold_forever, args=(1, queue))
    holder.start()
    assert queue.get(timeout=30) == ["0"]
    assert gs.slot_holders(1) == {0: holder.pid}
    os.kill(holder.pid, signal.SIGKILL)
    holder.join()
    with gs.gpu_slots(1, total=1, timeout=5) as devices:
        assert devices == ["0"]
        assert gs.slot_holders(1) == {0: os.getpid()}
    assert gs.slot_holders(1) == {0: None}


def test_env_set_and_restored():
    with gs.gpu_slots(2, total=4) as devices:
        assert devices == ["0", "1"]
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert "CUDA_VISIBLE_DEVICES" not in os.environ


def test_scheduler_assignment_is_kept(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_GPUS", "3")
    with gs.gpu_slots(1, total=4) as devices:
        assert devices == ["3"]
        assert "CUDA_VISIBLE_DEVICES" not in os.environ
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,2")
    with gs.gpu_slots(1, total=4) as devices:
        assert devices == ["1", "2"]
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1,2"


def test_no_gpus_or_no_request_is_a_no_op(monkeypatch):
    monkeypatch.setenv("RELIGHTFLOW_GPUS", "0")
    with gs.gpu_slots(1) as devices:
        assert devices == []
    monkeypatch.setenv("RELIGHTFLOW_GPUS", "2")
    with gs.gpu_slots(0) as devices:
        assert devices == []
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    assert not gs.default_lock_dir().exists()


def test_gpu_count_from_env(monkeypatch):
    monkeypatch.setenv("RELIGHTFLOW_GPUS", "8")
    assert gs.gpu_count() == 8
    with gs.gpu_slots(9) as devices:  # lowered to the machine's 8, like Snakemake's --resources cap
        assert devices == [str(i) for i in range(8)]


GPU_SNAKEFILE = """
rule all:
    input:
        expand("out/shard{i}.json", i=range(8)),
        "out/train.json",

rule shard:
    output:
        "out/shard{i}.json",
    resources:
        gpu=1,
    script:
        "record.py"

rule train:
    input:
        expand("out/shard{i}.json", i=range(8)),
    output:
        "out/train.json",
    resources:
        gpu=8,
    script:
        "record.py"
"""

RECORD_SCRIPT = """
import json, os, time
from relightflow.gpu_slots import gpu_slots

with gpu_slots(snakemake.resources.gpu) as devices:
    start = time.monotonic()
    time.sleep(1.0)
    record = {"devices": devices, "env": os.environ["CUDA_VISIBLE_DEVICES"], "start": start, "end": time.monotonic()}
with open(snakemake.output[0], "w") as f:
    json.dump(record, f)
"""


@pytest.mark.slow
def test_local_profile_gives_each_gpu_job_its_own_device(tmp_path, monkeypatch):
    """8 shard jobs on a 4-GPU machine via profiles/local: never two on one GPU; training takes all 4."""
    (tmp_path / "Snakefile").write_text(GPU_SNAKEFILE)
    (tmp_path / "record.py").write_text(RECORD_SCRIPT)
    monkeypatch.setenv("RELIGHTFLOW_GPUS", "4")
    cmd = [SNAKEMAKE, "--profile", str(REPO / "profiles/local"), "--cores", "8", "--directory", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    shards = [json.loads((tmp_path / f"out/shard{i}.json").read_text()) for i in range(8)]
    assert all(len(r["devices"]) == 1 and r["env"] == r["devices"][0] for r in shards)
    by_device: dict[str, list[tuple[float, float]]] = {}
    for r in shards:
        by_device.setdefault(r["devices"][0], []).append((r["start"], r["end"]))
    for intervals in by_device.values():
        intervals.sort()
        assert all(b[0] >= a[1] for a, b in zip(intervals, intervals[1:], strict=False))
    overlapping = sum(
        1 for a in shards for b in shards if a is not b and a["start"] < b["end"] and b["start"] < a["end"]
    )
    assert overlapping > 0 and len(by_device) > 1, "GPU jobs ran side by side on different devices"
    train = json.loads((tmp_path / "out/train.json").read_text())
    assert train["devices"] == ["0", "1", "2", "3"]  # gpu=8 capped by the profile at the machine's 4


def test_lock_folder_must_be_private(tmp_path):
    """Another user of a shared node must not be able to hand us a lock folder or plant a symlink."""
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    with pytest.raises(PermissionError, match="not a private folder"):
        gs.try_acquire(1, 2, shared)
    target = tmp_path / "victim.txt"
    target.write_text("precious\n")
    os.symlink(tmp_path / "private", tmp_path / "link")
    with pytest.raises(PermissionError, match="not a private folder"):
        gs.try_acquire(1, 2, tmp_path / "link")  # a symlinked folder is refused
    private = gs.private_dir(tmp_path / "private")
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    os.symlink(target, private / "gpu0.lock")  # a planted lock file is never followed
    with pytest.raises(OSError):
        gs.try_acquire(1, 1, private)
    assert target.read_text() == "precious\n"
