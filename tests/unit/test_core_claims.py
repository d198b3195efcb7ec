"""Replicas claim whole cores for their engine threads: no two live processes share one, and
a process that dies (even by SIGKILL) gives its cores back."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from serve_apps.vllm_engine import claim_cores

CORES = sorted(os.sched_getaffinity(0))


def test_claims_are_exclusive_and_released_on_close(tmp_path: Path) -> None:
    first_locks, first = claim_cores(1, tmp_path)
    rest_locks, rest = claim_cores(len(CORES), tmp_path)
    assert first == CORES[:1]
    assert rest == CORES[1:]  # whatever is left, never the claimed core
    assert claim_cores(1, tmp_path)[1] == []  # nothing free
    for handle in first_locks:
        handle.close()
    again_locks, again = claim_cores(1, tmp_path)
    assert again == first
    for handle in rest_locks + again_locks:
        handle.close()


def test_a_killed_process_frees_its_cores(tmp_path: Path) -> None:
    code = (
        "import sys, time; from serve_apps.vllm_engine import claim_cores; "
        f"locks, cores = claim_cores({len(CORES)}, __import__('pathlib').Path(sys.argv[1])); "
        "print(len(cores), flush=True); time.sleep(60)"
    )
    root = Path(__file__).resolve().parents[2]
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True, cwd=root
    )
    try:
        assert child.stdout.readline().strip() == str(len(CORES))
        assert claim_cores(1, tmp_path)[1] == []  # the child holds every core
    finally:
        child.kill()
        child.wait()
    deadline = time.time() + 10
    while not (claimed := claim_cores(1, tmp_path))[1]:
        assert time.time() < deadline, "cores of a dead process stayed claimed"
        time.sleep(0.1)
    for handle in claimed[0]:
        handle.close()
