"""What ``ovbot serve`` needs from a platform adapter, and nothing more.

An adapter translates one platform (HTTP, Telegram, Discord, ...) into calls of the core
facade, ``ovbot.core.bot.Bot``, which it receives when it is built: there are no module
globals, so tests run several side by side. The lifecycle follows python-telegram-bot's
``Application``: ``start()`` connects and begins taking messages (it raises, with a
message a user can act on, when it cannot), ``stop()`` stops taking messages and lets
replies in flight finish; both are also what ``async with`` does. ``health()`` says
whether the adapter is connected now, for ``/ready``.
"""

from __future__ import annotations

from types import TracebackType
from typing import Protocol, runtime_checkable

from ovbot.core.app import Check


@runtime_checkable
class Adapter(Protocol):
    #: short lower-case name used in logs and in /ready ("http", "telegram", ...)
    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def health(self) -> Check: ...


class AdapterBase:
    """Gives an adapter ``async with`` on top of its start/stop."""

    name = "adapter"

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> AdapterBase:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
