"""How a loop controller is operated: the background loop that ticks it, and the operator's
levers (pause, force a cycle, freeze, roll back).

A mixin of :class:`actors.controller.LoopController` (kept apart so the state machine's file
holds the machine): each lever takes the controller's lock, audits, and persists the state
it leaves, exactly as a tick does. Ray exposes these as the actor's methods.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from actors.loop_metrics import export_loop, loop_metrics
from core import faults
from core.loop import state as machine
from core.loop.state import LoopState, Phase
from core.loop.statelog import Fenced
from core.registry import ModelRegistry, default_actor
from schemas.loop import LoopConfig

logger = logging.getLogger(__name__)


class OperatorControls:
    """Mixed into LoopController, which provides these attributes and the methods used
    (``tick``, ``_audit``, ``_save``, ``_rollback``, ``_clear_canary``)."""

    cfg: LoopConfig
    consumer: Any
    state: LoopState
    registry: ModelRegistry
    _lock: threading.Lock
    _stop: threading.Event
    _thread: threading.Thread | None

    # -- running in the background -------------------------------------------------------------

    def start(self) -> bool:
        if self._thread and self._thread.is_alive():
            return False
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return True

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        metrics = loop_metrics()
        while not self._stop.is_set():
            try:
                state = self.tick()
                export_loop(metrics, self.cfg.model_name, state, self.consumer)
            except (faults.InjectedFault, Fenced):
                raise
            except Exception:  # keep the loop alive; the phase is retried next tick
                logger.exception("tick failed in phase %s; retrying", self.state.phase)
            self._stop.wait(self.cfg.tick_interval_s)

    # -- operator controls ---------------------------------------------------------------------

    def pause(self, paused: bool = True) -> dict[str, Any]:
        with self._lock:
            self.state = self.state.model_copy(update={"paused": paused})
            self._audit("loop.pause" if paused else "loop.resume", {})
            self._save()
            return machine.dump_state(self.state)

    def force_trigger(self) -> dict[str, Any]:
        with self._lock:
            self.state = self.state.model_copy(update={"force": True})
            self._audit("loop.force", {})
            self._save()
            return machine.dump_state(self.state)

    def freeze(self, frozen: bool = True, note: str = "", by: str | None = None) -> dict[str, Any]:
        """Pin production (or let it go): while frozen the loop triggers no cycle and moves no
        alias; a canary in progress is held, neither promoted nor rolled back, except by
        :meth:`rollback`. ``by`` is the operator (user@host of the caller by default)."""
        with self._lock:
            who = by or default_actor()
            action = "loop.freeze" if frozen else "loop.unfreeze"
            self._audit(action, {"note": note, "by": who})
            self.state = machine.freeze_changed(self.state, frozen, who, note, time.time())
            self._save()
            return machine.dump_state(self.state)

    def rollback(self, reason: str = "operator rollback") -> dict[str, Any]:
        """Roll back production to its previous version (and end any canary)."""
        with self._lock:
            if self.state.phase is Phase.canary:
                self._rollback(reason)
            else:
                self._clear_canary(self.cfg.model_name)
                self.registry.rollback(self.cfg.model_name, "production", reason=reason)
            self._save()
            return machine.dump_state(self.state)

    def status(self) -> dict[str, Any]:
        with self._lock:
            return machine.dump_state(self.state)
