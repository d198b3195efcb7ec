"""A crash-point sweep of the loop controller: a crash at every write of one whole cycle
(publishing, training, evaluating, canary, promote), before the write and after it; a
restarted controller must always end the same way: the candidate promoted, one snapshot
published, one fine-tune submitted, the audit chain intact.

Without Ray: the job API and the consumer are the parts a controller restart does not
touch, so they are plain objects shared by the crashed controller and its successor (the
job API's jobs "run" at submission, writing the result a real job would).
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from actors.controller import LoopController
from core import storage
from core.loop.statelog import Fenced, StateLog, read_state
from core.registry import ModelRegistry
from tests.tinymodel import loop_settings, model_dir


class Crash(BaseException):
    """The controller process dies here (BaseException: nothing in it may catch this)."""


class Writes:
    """Counts the controller's writes and crashes at the ``crash_at``-th, before or after it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count, self.crash_at, self.after, self.paused = 0, 0, False, False
        for name in ("write_bytes", "create_exclusive"):
            real = getattr(storage, name)
            monkeypatch.setattr(storage, name, self._wrap(real))

    def _wrap(self, real: Any) -> Any:
        def write(*args: Any) -> Any:
            if self.paused:
                return real(*args)
            self.count += 1
            hit = self.count == self.crash_at
            if hit and not self.after:
                raise Crash(f"before write {self.count}")
            result = real(*args)
            if hit:
                raise Crash(f"after write {self.count}")
            return result

        return write

    def tick(self) -> None:
        """A write that is not storage's (the consumer's mark_published) counts too."""
        self._wrap(lambda: None)()


class Jobs:
    """The cluster's job API: submissions survive the controller; a job runs at submission."""

    def __init__(self, writes: Writes, registry: ModelRegistry, tmp: Path) -> None:
        self.writes, self.registry, self.tmp = writes, registry, tmp
        self.submitted: list[str] = []
        self.statuses: dict[str, str] = {}

    def status(self, submission_id: str) -> str | None:
        return self.statuses.get(submission_id)

    def submit(self, submission_id: str, entrypoint: str) -> None:
        self.submitted.append(submission_id)
        if submission_id in self.statuses:
            return
        result_uri = re.search(r"--result (\S+)", entrypoint).group(1)
        self.writes.paused = True  # the job's own writes are not the controller's
        try:
            storage.write_json(storage.resolve(result_uri), self._run(entrypoint))
        finally:
            self.writes.paused = False
        self.statuses[submission_id] = "SUCCEEDED"

    def stop(self, submission_id: str) -> None:
        self.statuses[submission_id] = "STOPPED"

    def _run(self, entrypoint: str) -> dict[str, Any]:
        if "jobs.feedback_snapshot" in entrypoint:
            return {"snapshot_id": "s", "uri": "u", "eval_snapshot_id": "e", "eval_uri": "eu",
                    "examples": 3, "quarantined": 0, "upto": 5}  # fmt: skip
        if "jobs.train" in entrypoint:
            version = self.registry.register("m", model_dir(self.tmp, "candidate"))
            return {"registered": version.ref}
        scores = {"feedback_loss": 1.0, "heldout_loss": 2.0}
        return {"gate": {"passed": True, "reason": "better"}, "candidate": scores,
                "production": scores}  # fmt: skip


class Consumer:
    """The consumer actor, as the controller sees it: five examples, a liked canary."""

    def __init__(self, writes: Writes) -> None:
        self.writes = writes
        self.published = 0

    def pending_examples(self) -> dict[str, Any]:
        fresh = self.published < 5
        examples = [
            {"prompt": f"Q{i}?", "answer": "A.", "event_ids": [f"e{i}"], "users": [],
             "key": f"{i:016d}"}
            for i in range(3)
        ] if fresh else []  # fmt: skip
        return {"upto": 5, "examples": examples, "quarantined": []}

    def mark_published(self, upto: int, ratings_upto: int | None = None) -> None:
        self.writes.tick()
        self.published = max(self.published, upto)

    def version_stats(self, version: str) -> dict[str, Any]:
        return {}

    def canary_stats(self, version: str, since: float) -> dict[str, Any]:
        return {"rated": 10, "accepted": 10 if version == "m:2" else 2}

    def drift(self, version: str, reference: Any) -> None:
        return None


def world(tmp_path: Path, writes: Writes) -> tuple[dict, ModelRegistry, Jobs, Consumer]:
    writes.paused = True
    registry = ModelRegistry(str(tmp_path / "registry"), actor="test")
    registry.register("m", model_dir(tmp_path, "production"))
    registry.set_alias("m", "production", 1)
    writes.paused = False
    cfg = loop_settings(
        tmp_path,
        policy={"min_new_examples": 1},
        evaluate={"heldout_snapshot_uri": str(tmp_path / "corpus")},
    )
    return cfg, registry, Jobs(writes, registry, tmp_path), Consumer(writes)


def run_cycle(cfg: dict, jobs: Jobs, consumer: Consumer, ticks: int = 30) -> dict[str, Any]:
    """Tick a controller until a cycle ends; after a crash, a new one picks up its state."""
    controller = None
    for _ in range(ticks):
        try:
            controller = controller or LoopController(cfg, consumer, jobs)
            state = controller.tick()
        except Crash:
            controller = None  # the actor restarts
            continue
        if state["history"]:
            return state
    raise AssertionError(f"no outcome after {ticks} ticks")


def test_a_cycle_without_faults_promotes(tmp_path: Path, monkeypatch) -> None:
    writes = Writes(monkeypatch)
    cfg, registry, jobs, consumer = world(tmp_path, writes)
    state = run_cycle(cfg, jobs, consumer)
    assert state["history"][-1]["outcome"] == "promoted"
    assert registry.aliases("m") == {"production": 2}
    assert writes.count > 10  # the sweep below crashes at each of these


@pytest.mark.parametrize("after", [False, True], ids=["before", "after"])
def test_a_crash_at_any_write_ends_the_same_way(tmp_path: Path, monkeypatch, after) -> None:
    writes = Writes(monkeypatch)
    cfg, _, jobs, consumer = world(tmp_path / "count", writes)
    run_cycle(cfg, jobs, consumer)
    total = writes.count
    for n in range(1, total + 1):
        writes.count, writes.crash_at, writes.after = 0, n, after
        cfg, registry, jobs, consumer = world(tmp_path / f"crash-{n}", writes)
        state = run_cycle(cfg, jobs, consumer)
        where = f"crash {'after' if after else 'before'} write {n} of {total}"
        last = state["history"][-1]
        assert last["outcome"] == "promoted", (where, last["outcome_reason"])
        assert registry.aliases("m") == {"production": 2}, where
        assert registry.routing("m")["weights"] == {"production": 100}, where
        kinds = [s.split("-")[1] for s in dict.fromkeys(jobs.submitted)]
        assert kinds == ["publish", "finetune", "evaluate"], (where, jobs.submitted)
        assert [v.version for v in registry.versions("m")] == [1, 2], where
        assert consumer.published == 5, where
        writes.paused = True
        assert registry.audit.verify() == [], where
        writes.paused = False


def test_a_zombie_controller_is_fenced_off(tmp_path: Path, monkeypatch) -> None:
    writes = Writes(monkeypatch)
    cfg, _, jobs, consumer = world(tmp_path, writes)
    zombie = LoopController(cfg, consumer, jobs)
    zombie.tick()  # triggered, publishing
    successor = LoopController(cfg, consumer, jobs)  # the actor restarted elsewhere
    assert successor.epoch > zombie.epoch
    log = StateLog(storage.resolve(str(tmp_path / "loop" / "controller" / "states")))
    before = log.latest()
    with pytest.raises(Fenced, match="fenced"):
        zombie.tick()
    assert log.latest() == before, "the zombie wrote nothing"
    assert run_cycle(cfg, jobs, consumer)["history"][-1]["outcome"] == "promoted"


def test_a_zombie_that_stalls_at_its_write_is_fenced(tmp_path: Path, monkeypatch) -> None:
    """The hole a check-then-write leaves: the zombie is still the newest when it decides to
    write, and its successor starts (and writes) before the write lands."""
    writes = Writes(monkeypatch)
    cfg, _, jobs, consumer = world(tmp_path, writes)
    zombie = LoopController(cfg, consumer, jobs)
    successors: list[LoopController] = []
    real = storage.create_exclusive

    def stalled(loc: storage.Location, data: bytes) -> bool:
        if "/states/" in loc.path and not stalled.once:  # the zombie's pause, right here
            stalled.once = True
            successors.append(LoopController(cfg, consumer, jobs))
        return real(loc, data)

    stalled.once = False

    monkeypatch.setattr(storage, "create_exclusive", stalled)
    with pytest.raises(Fenced, match=f"written by epoch {zombie.epoch + 1}"):
        zombie.tick()
    log = StateLog(storage.resolve(str(tmp_path / "loop" / "controller" / "states")))
    newest, state = log.latest()
    assert newest == successors[0].epoch and state["phase"] == "idle", "the successor's claim"
    assert zombie._stop.is_set(), "a fenced controller stops its loop"


def test_the_state_log_is_a_compare_and_set(cas_store) -> None:
    log = StateLog(storage.resolve(cas_store.uri("states"), cas_store.settings), keep=3)
    assert log.latest() == (0, None)
    a, _ = log.claim({"n": 0})
    b, _ = log.claim({"n": 0})  # a second writer, started from the same version
    assert (a, b) == (1, 2)
    with pytest.raises(Fenced, match="version 2 was written by epoch 2"):
        log.write(a, a, {"n": 1})
    # Eight writers from the same version at once: exactly one wins.
    with ThreadPoolExecutor(8) as pool:
        tries = list(pool.map(lambda i: _try_write(log, b, i), range(8)))
    assert sum(t is not None for t in tries) == 1, tries
    v = 3
    for n in range(2, 6):
        v = log.write(v, b, {"n": n})
    assert log.latest() == (7, {"n": 5})
    assert [f.relpath for f in storage.list_files(log.folder)] == [
        f"{n:012d}.json" for n in (5, 6, 7)
    ], "only the newest three are kept"
    # A writer so far behind that its slot was pruned writes nothing anyone reads.
    with pytest.raises(Fenced, match="version 2 was pruned"):
        log.write(2, a, {"n": -1})
    assert not storage.exists(log.folder.join(f"{3:012d}.json"))
    assert log.latest() == (7, {"n": 5})


def _try_write(log: StateLog, after: int, n: int) -> int | None:
    try:
        return log.write(after, 100 + n, {"n": 1})
    except Fenced:
        return None


def test_a_state_file_from_before_the_log_is_taken_up(tmp_path: Path, monkeypatch) -> None:
    writes = Writes(monkeypatch)
    cfg, _, jobs, consumer = world(tmp_path, writes)
    legacy = storage.resolve(str(tmp_path / "loop" / "controller" / "state.json"))
    storage.write_json(legacy, {"cycle": 7, "paused": True})
    controller = LoopController(cfg, consumer, jobs)
    assert (controller.state.cycle, controller.state.paused) == (7, True)
    folder = storage.resolve(str(tmp_path / "loop" / "controller" / "states"))
    assert read_state(folder)["cycle"] == 7
