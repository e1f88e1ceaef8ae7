"""Per-user usage limits: chat turns per sliding window and images per day.

Many people share one local model, so one person must not be able to use it all. The
windows slide over the usage events the store keeps (no fixed reset time that everyone
hits at once), and the moment a request is allowed again is exact: when the oldest event
that counts leaves the window. Admins are never limited. A limit of 0 turns the feature
off (for everyone by default, or for one user by override).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from ovbot.core.access import check_user_key
from ovbot.core.durations import DAY_S, duration_text, window_text
from ovbot.core.domain import LimitOverride, UserRef
from ovbot.core.errors import Forbidden, InvalidInput, RateLimited
from ovbot.core.store.base import Store

LimitKind = Literal["chat", "image"]
#: how often usage older than the longest window is deleted (it can never count again)
PRUNE_EVERY_S = 600.0

log = logging.getLogger(__name__)


#: the largest limit an admin may set: more than anyone can use, and within SQLite's integers
MAX_LIMIT_VALUE = 1_000_000


class AdminCheck(Protocol):
    """Admin rights are decided by ``ovbot.core.access.AccessControl`` alone."""

    async def is_admin(self, user_key: str) -> bool: ...

    async def require_admin(self, requester: UserRef) -> None: ...


@dataclass(frozen=True, slots=True)
class _Rule:
    """One limit as it applies to one user right now."""

    kind: LimitKind
    name: str  # the setting's name, used as RateLimited.limit_name
    limit: int | None  # None = unlimited (admin)
    window_s: float
    overridden: bool


@dataclass(frozen=True, slots=True)
class _Usage:
    used: int
    remaining: int | None
    reset_in_s: float | None  # until the oldest counted use leaves the window

    def as_dict(self, rule: _Rule) -> dict[str, Any]:
        return {
            "limit": rule.limit,
            "window_s": rule.window_s,
            "used": self.used,
            "remaining": self.remaining,
            "reset_in_s": self.reset_in_s,
            "overridden": rule.overridden,
        }


class RateLimits:
    """Checks and records usage, and lets admins change one user's limits at run time
    (overrides live in the store, so they survive restarts)."""

    def __init__(
        self,
        store: Store,
        *,
        chat_turns_per_window: int,
        chat_window_s: float,
        images_per_day: int,
        access: AdminCheck,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if chat_window_s <= 0:
            raise ValueError("chat_window_s must be positive")
        self._store = store
        self._chat_default = chat_turns_per_window
        self._chat_window_s = chat_window_s
        self._images_default = images_per_day
        self._access = access
        self._clock = clock
        # per user: a check and the charge that follows it are one step, so two requests
        # racing must not both pass the last slot ([lock, holders and waiters])
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}
        self._pruned_at = -math.inf

    @classmethod
    def from_settings(
        cls, store: Store, settings: Any, access: AdminCheck, clock: Callable[[], float] = time.time
    ) -> "RateLimits":
        return cls(
            store,
            chat_turns_per_window=settings.chat_turns_per_window,
            chat_window_s=settings.chat_window_s,
            images_per_day=settings.images_per_day,
            access=access,
            clock=clock,
        )

    # ------------------------------------------------------------------ enforcement
    async def check(self, user: UserRef, kind: LimitKind) -> None:
        """Raise RateLimited (over the limit) or Forbidden (the limit is 0: the feature
        is off, waiting would not help); records nothing (see ``admit``)."""
        now = self._clock()
        await self._prune_now_and_then(now)
        rule = await self._rule(user.key, kind)
        if rule.limit is None:
            return
        self._refuse_if_disabled(rule)
        usage = await self._usage(user.key, rule, now)
        if usage.remaining == 0:
            raise self._limited(rule, usage)

    @contextlib.asynccontextmanager
    async def admit(self, user: UserRef, kind: LimitKind) -> AsyncIterator[tuple[LimitKind, ...]]:
        """``check``, then hold the user's turn while the caller queues the job: yields
        the usage to charge in the job's insert transaction (``JobQueue.submit(job,
        usage=...)``). A request the queue refuses (full) is then never charged, and two
        requests of one user racing for the last slot cannot both get it."""
        async with self._user_turn(user.key):
            await self.check(user, kind)
            yield (kind,)

    async def check_and_record(self, user: UserRef, kind: LimitKind) -> None:
        """Check and count one use now (for callers that queue nothing)."""
        async with self.admit(user, kind):
            await self._store.record_usage(user.key, kind, self._clock())

    @contextlib.asynccontextmanager
    async def _user_turn(self, user_key: str) -> AsyncIterator[None]:
        """One admission at a time per user (others are not held up); the lock is
        dropped when nobody holds or waits for it, so idle users cost no memory."""
        lock, users = self._locks.setdefault(user_key, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                self._locks.pop(user_key, None)

    async def _prune_now_and_then(self, now: float) -> None:
        """Usage older than the longest window never counts again; without pruning the
        table grows by a row per message forever. A failed prune only waits for the
        next round: it must not refuse a request."""
        if now - self._pruned_at < PRUNE_EVERY_S:
            return
        self._pruned_at = now
        try:
            removed = await self._store.prune_usage(now - max(self._chat_window_s, DAY_S))
        except Exception:
            log.warning("could not prune old usage rows; retrying later", exc_info=True)
            return
        if removed:
            log.info("pruned %d usage rows older than the longest limit window", removed)

    def _refuse_if_disabled(self, rule: _Rule) -> None:
        if rule.limit != 0:
            return
        feature = "Chat" if rule.kind == "chat" else "Image generation"
        whom = "for you by an admin" if rule.overridden else "on this bot"
        raise Forbidden(f"{feature} is turned off {whom}.")

    def _limited(self, rule: _Rule, usage: _Usage) -> RateLimited:
        retry = usage.reset_in_s or 0.0
        what = "chat messages" if rule.kind == "chat" else "images"
        message = (
            f"You reached your limit of {rule.limit} {what} per {window_text(rule.window_s)}. "
            f"Try again in {duration_text(retry)}."
        )
        return RateLimited(message, retry, rule.name)

    # ------------------------------------------------------------------ reports
    async def usage(self, user: UserRef) -> dict[str, Any]:
        """What the user's own ``usage`` command shows."""
        return await self._report(user.key)

    async def show(self, requester: UserRef, user_key: str) -> dict[str, Any]:
        """What an admin sees: the user's effective limits, overrides, defaults, usage.
        The key is checked like set's: the report quotes it back to the admin."""
        await self._require_admin(requester)
        return await self._admin_report(check_user_key(user_key))

    async def _admin_report(self, user_key: str) -> dict[str, Any]:
        report = await self._report(user_key)
        override = await self._store.get_limit_override(user_key)
        report["override"] = (
            None
            if override is None
            else {"chat_per_window": override.chat_per_window, "images_per_day": override.images_per_day}
        )
        report["defaults"] = {
            "chat_per_window": self._chat_default,
            "chat_window_s": self._chat_window_s,
            "images_per_day": self._images_default,
        }
        return report

    async def _report(self, user_key: str) -> dict[str, Any]:
        now = self._clock()
        report: dict[str, Any] = {"user": user_key, "admin": await self.is_admin(user_key)}
        for kind in ("chat", "image"):
            rule = await self._rule(user_key, kind)
            report[kind] = (await self._usage(user_key, rule, now)).as_dict(rule)
        return report

    # ------------------------------------------------------------------ admin
    async def set(
        self,
        requester: UserRef,
        user_key: str,
        chat_per_window: int | None = None,
        images_per_day: int | None = None,
    ) -> dict[str, Any]:
        """Override one user's limits; ``None`` keeps that limit as it is. Returns show()."""
        await self._require_admin(requester)
        user_key = check_user_key(user_key)
        if chat_per_window is None and images_per_day is None:
            raise InvalidInput("limits", "give chat_per_window and/or images_per_day")
        _check_count("chat_per_window", chat_per_window)
        _check_count("images_per_day", images_per_day)
        current = await self._store.get_limit_override(user_key) or LimitOverride(user_key)
        await self._store.set_limit_override(
            LimitOverride(
                user_key,
                chat_per_window=current.chat_per_window if chat_per_window is None else chat_per_window,
                images_per_day=current.images_per_day if images_per_day is None else images_per_day,
            )
        )
        return await self._admin_report(user_key)

    async def reset(self, requester: UserRef, user_key: str) -> dict[str, Any]:
        """Drop one user's overrides (back to the defaults). Returns show()."""
        await self._require_admin(requester)
        user_key = check_user_key(user_key)
        await self._store.delete_limit_override(user_key)
        return await self._admin_report(user_key)

    async def is_admin(self, user_key: str) -> bool:
        return await self._access.is_admin(user_key)

    async def _require_admin(self, requester: UserRef) -> None:
        await self._access.require_admin(requester)

    # ------------------------------------------------------------------ internals
    async def _rule(self, user_key: str, kind: LimitKind) -> _Rule:
        name = "chat_turns_per_window" if kind == "chat" else "images_per_day"
        window = self._chat_window_s if kind == "chat" else DAY_S
        if await self.is_admin(user_key):
            return _Rule(kind, name, None, window, overridden=False)
        default = self._chat_default if kind == "chat" else self._images_default
        override = await self._store.get_limit_override(user_key)
        value = None
        if override is not None:
            value = override.chat_per_window if kind == "chat" else override.images_per_day
        return _Rule(kind, name, default if value is None else value, window, overridden=value is not None)

    async def _usage(self, user_key: str, rule: _Rule, now: float) -> _Usage:
        start = now - rule.window_s
        # the window is (now - window, now]: a use exactly one window old no longer counts
        times = [t for t in await self._store.usage_times(user_key, rule.kind, start) if t > start]
        used = len(times)
        if rule.limit is None:
            return _Usage(used, None, None)
        remaining = max(rule.limit - used, 0)
        if not times:
            return _Usage(used, remaining, None)
        # the use whose expiry brings the count below the limit (the oldest, normally;
        # a later one when an override lowered the limit below what was already used)
        index = max(used - rule.limit, 0) if remaining == 0 and rule.limit > 0 else 0
        return _Usage(used, remaining, max(times[index] + rule.window_s - now, 0.0))


def _check_count(field: str, value: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_LIMIT_VALUE:
        raise InvalidInput(
            field, f"must be a whole number from 0 to {MAX_LIMIT_VALUE:,} (0 turns the feature off)"
        )
