"""Engine gates: whether the queue may start jobs of one kind right now.

The local engines live in a supervised worker process that is restarted when it dies
(``ovbot.core.engines.local.client``). Starting a job while it restarts would only fail
the job, and a queue that keeps starting jobs fails every waiting one within a second.
So before it starts a job the queue asks that kind's gate:

- ``open``: start it;
- ``wait``: leave the job in line and ask again when ``changed()`` returns (the engine is
  starting or restarting; requests keep being accepted and queued meanwhile);
- ``down``: the engine will not come back (its restart budget is spent): the waiting
  jobs fail with ``reason``, new ones are refused with it, and ``/ready`` says why.

A gate is deliberately tiny (two methods) so any engine can provide one; a kind without
a gate is always open (the remote engine: its "down" only means the last request failed,
and nothing would ever probe it back up if jobs stopped being tried).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from ovbot.core.engines.types import EngineHealth

GateState = Literal["open", "wait", "down"]

#: what users whose request can no longer run are told (``{detail}``: the engine's reason)
ENGINE_DOWN = (
    "The bot's engine stopped and could not be restarted ({detail}), so your request "
    "could not run. Please try again once the bot is back."
)


@dataclass(frozen=True, slots=True)
class GateStatus:
    state: GateState
    #: why it is not open, safe to show users (a "down" reason is what waiting jobs fail with)
    reason: str = ""

    @property
    def open(self) -> bool:
        return self.state == "open"


OPEN = GateStatus("open")


class EngineGate(Protocol):
    def status(self) -> GateStatus:
        """Whether a job of this kind may start now; cheap, called at every dispatch."""

    async def changed(self) -> None:
        """Return once ``status()`` may have changed (the queue then asks again)."""


class HealthGate:
    """A gate read from an engine's ``health()``: ready is open, down is down, anything
    else (starting, restarting, stopped) waits. ``changed()`` polls: a restart takes
    seconds, so ``poll_s`` of delay is invisible, and no engine needs a callback API."""

    def __init__(self, health: Callable[[], EngineHealth], poll_s: float = 0.1) -> None:
        self._health = health
        self._poll_s = poll_s

    def status(self) -> GateStatus:
        health = self._health()
        if health.state == "ready":
            return OPEN
        if health.state == "down":
            return GateStatus("down", ENGINE_DOWN.format(detail=health.detail or "no reason given"))
        return GateStatus("wait", f"the engine is {health.state}")

    async def changed(self) -> None:
        await asyncio.sleep(self._poll_s)
