"""``Bot``: the one object platform adapters call.

Built at the entry point from an initialized ``App`` and injected into every adapter
(HTTP, Telegram, Discord, the terminal). Adapters only translate: who may do what
(access lists, blocks, admin rights, ownership of jobs), which conversation a message
belongs to, how a turn's two jobs (the chat reply and the picture it asked for) become
one stream of events — all of that is decided here, and refused with typed errors
(``ovbot.core.errors``) whose ``user_message`` is what the user should read.

Ownership: a job belongs to the user who asked for it. User keys are hierarchical, so a
requester whose key is a prefix of the owner's (``http:<key id>`` for
``http:<key id>:alice``) sees that owner's jobs too: that is how one HTTP API key sees
every user it created. Admins see and cancel everything.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from ovbot.core.access import AccessControl
from ovbot.core.chat.images import follow_up_job_id
from ovbot.core.domain import ChatRef, ImageParams, Job, JobKind, UserRef
from ovbot.core.errors import InvalidInput, NotFound
from ovbot.core.turn_stream import follow_turn
from ovbot.core.turns import (
    REASONING_MODES,
    ChatSettings,
    ImageFile,
    JobStatus,
    LimitUsage,
    ReasoningMode,
    TurnEvent,
    UndeliveredTurn,
    UsageReport,
)

if TYPE_CHECKING:
    from ovbot.core.app import App, Check, Readiness

log = logging.getLogger("ovbot.bot")

#: finished replies older than this are not re-posted after a restart (stale by then)
DELIVERY_HORIZON_S = 24 * 3600.0
#: handled platform updates are kept this long (Telegram re-sends an unconfirmed update
#: for up to 24 h; a handled row is what makes such a duplicate a no-op)
UPDATE_HORIZON_S = 24 * 3600.0
#: how often remembering updates also prunes the handled ones
UPDATE_PRUNE_EVERY_S = 3600.0
#: tries at handling one update before it is given up: an update whose handling kills
#: the process would otherwise be replayed, and kill it again, at every start
UPDATE_MAX_ATTEMPTS = 3
NO_SUCH_JOB = "There is no such request (or it is not yours)."
NO_SUCH_IMAGE = "There is no such picture (or it is not yours)."
IMAGE_NOT_READY = "The picture is not ready yet."

AdapterHealth = Callable[[], "Check"]


@dataclass(frozen=True, slots=True)
class TurnOptions:
    """How one chat message should be answered. ``image`` asks for a picture with the
    reply (its prompt may stay empty: the model writes it); ``reasoning`` overrides
    the chat's reasoning mode for this message only. ``show_reasoning`` in a chat whose
    mode is "off" reasons "short" for this message (there would be nothing to show)."""

    image: ImageParams | None = None
    show_reasoning: bool = False
    reasoning: ReasoningMode | None = None


class TurnHandle:
    """One submitted (or resumed) turn: its job ids, its events, and cancel.

    Iterate it (``async for event in handle``) for the turn's events from the first,
    ending with exactly one terminal event; iterating again replays from the start.
    """

    def __init__(self, bot: Bot, job: Job, requester: UserRef) -> None:
        self._bot = bot
        self.job_id = job.id
        self.kind = job.kind
        self.user = job.user
        self.chat = job.chat
        self._requester = requester

    @property
    def picture_job_id(self) -> str | None:
        """The picture job a chat reply leads to has a fixed id, known before it exists."""
        return follow_up_job_id(self.job_id) if self.kind is JobKind.CHAT else self.job_id

    def __aiter__(self) -> AsyncIterator[TurnEvent]:
        return self._bot._follow(self.job_id)

    async def cancel(self) -> JobStatus:
        """Cancel the turn: its chat job and the picture job it started."""
        return await self._bot.cancel(self.job_id, self._requester)


class Bot:
    def __init__(self, app: App, access: AccessControl) -> None:
        self._app = app
        self._access = access
        self._adapters: dict[str, AdapterHealth] = {}
        #: jobs whose delivery someone in this process already took on
        self._claimed: set[str] = set()
        self._updates_pruned_at = 0.0

    # ------------------------------------------------------------------ turns
    async def submit_turn(
        self, user: UserRef, chat: ChatRef, text: str, options: TurnOptions | None = None
    ) -> TurnHandle:
        """Queue one chat message (durable before this returns)."""
        options = options or TurnOptions()
        await self._access.check(user, chat)
        mode = options.reasoning or await self._reasoning_mode(chat)
        if options.show_reasoning and options.reasoning is None and mode == "off":
            mode = "short"  # asking to see the reasoning asks for some: the least there is
        job = await self._app.service.submit_chat(
            user, chat, text, options.image, options.show_reasoning, mode
        )
        self._claimed.add(job.id)
        return TurnHandle(self, job, user)

    async def imagine(self, user: UserRef, chat: ChatRef, params: ImageParams) -> TurnHandle:
        """Queue one picture; fields left unset take the chat's image defaults, then
        the bot's. BadParameter names the field and the allowed range."""
        await self._access.check(user, chat)
        defaults = (await self._app.store.get_chat_options(chat)).image_defaults
        if defaults:
            params = _with_defaults(params, ImageParams.from_dict({**defaults, "prompt": params.prompt}))
        job = await self._app.service.submit_image(user, chat, params)
        self._claimed.add(job.id)
        return TurnHandle(self, job, user)

    async def reroll(self, job_id: str, user: UserRef, chat: ChatRef) -> TurnHandle:
        """The same picture again with a new seed (a "re-roll" button). Anyone in the
        chat where the picture was posted may ask; the new picture is theirs."""
        job = await self._app.store.get_job(job_id)
        if job is None or job.kind is not JobKind.IMAGE:
            raise NotFound(NO_SUCH_IMAGE)
        if job.chat.key != chat.key and not await self._may_see(job.user.key, user):
            raise NotFound(NO_SUCH_IMAGE)
        params = replace(ImageParams.from_dict(job.payload["image"]), seed=None)
        return await self.imagine(user, chat, params)

    async def resume(self, job_id: str, requester: UserRef) -> TurnHandle:
        """The handle of a turn submitted earlier (before a restart, say)."""
        job = await self._visible_job(job_id, requester)
        self._claimed.add(job.id)
        return TurnHandle(self, job, requester)

    def _follow(self, job_id: str) -> AsyncIterator[TurnEvent]:
        return follow_turn(job_id, self._app.queue.subscribe, self._app.stopped)

    # ------------------------------------------------------------------ jobs
    async def status(self, job_id: str, requester: UserRef) -> JobStatus:
        return self._status(await self._visible_job(job_id, requester))

    async def cancel(self, job_id: str, requester: UserRef) -> JobStatus:
        """Cancel a queued or running job and the picture it started (owner or admin;
        Forbidden for anyone else, NotFound for an unknown id)."""
        is_admin = await self._access.is_admin(requester.key)
        job = await self._app.queue.cancel(job_id, requester, is_admin)
        if job.kind is JobKind.CHAT:
            picture = await self._app.store.get_job(follow_up_job_id(job.id))
            if picture is not None and not picture.state.terminal:
                await self._app.queue.cancel(picture.id, picture.user, True)
        return self._status(await self._app.store.get_job(job.id) or job)

    async def cancel_mine(self, user: UserRef, chat: ChatRef) -> list[JobStatus]:
        """Cancel every job ``user`` has waiting or running in ``chat`` (a bare
        "/cancel"); returns what was cancelled."""
        await self._access.check(user, chat)
        cancelled: list[JobStatus] = []
        for job in self._app.queue.live_jobs_of(user.key):
            if job.chat.key == chat.key and not job.payload.get("parent_job_id"):
                cancelled.append(await self.cancel(job.id, user))
        return cancelled

    async def image(self, image_or_job_id: str, requester: UserRef) -> ImageFile:
        """A stored picture by its id or by its picture job's id."""
        store = self._app.store
        job = await store.get_job(image_or_job_id)
        image_id = image_or_job_id
        if job is not None and job.kind is JobKind.IMAGE and await self._may_see(job.user.key, requester):
            if not job.state.terminal:
                raise NotFound(f"{IMAGE_NOT_READY} ({job.state.value})")
            image_id = str((job.result or {}).get("image_id", image_or_job_id))
        record = await store.get_image(image_id)
        if record is None or not await self._may_see(record.user_key, requester):
            raise NotFound(NO_SUCH_IMAGE)
        return ImageFile(record.id, record.job_id, record.path, dict(record.params))

    async def queue(self, user: UserRef, chat: ChatRef) -> list[JobStatus]:
        """The user's running and waiting jobs, with position and ETA."""
        await self._access.check(user, chat)
        return [self._status(job) for job in self._app.queue.live_jobs_of(user.key)]

    # ------------------------------------------------------------------ chat settings
    async def reset(self, user: UserRef, chat: ChatRef, forget: bool = False) -> None:
        """Start a new conversation in ``chat``; ``forget`` deletes the old one's text."""
        await self._access.check(user, chat)
        await self._app.service.reset(user, chat, forget)

    async def set_persona(self, user: UserRef, chat: ChatRef, persona: str | None) -> None:
        await self._access.check(user, chat)
        await self._app.service.set_persona(user, chat, persona)

    async def set_reasoning(self, user: UserRef, chat: ChatRef, mode: str | None) -> ReasoningMode:
        """Set the chat's reasoning mode (None: back to the default); returns the mode
        now in force."""
        await self._access.check(user, chat)
        if mode is not None and mode not in REASONING_MODES:
            raise InvalidInput("mode", f"must be one of {', '.join(REASONING_MODES)}")
        await self._app.store.set_reasoning_mode(chat, mode)
        return await self._reasoning_mode(chat)

    async def set_image_defaults(self, user: UserRef, chat: ChatRef, params: ImageParams | None) -> None:
        """Defaults for this chat's pictures (checked now against the engine's limits);
        None clears them. The prompt and the seed are never defaults."""
        await self._access.check(user, chat)
        if params is None:
            await self._app.store.set_image_defaults(chat, None)
            return
        params = replace(params, prompt="", seed=None)
        self._app.service.check_image(replace(params, prompt="check"))
        stored = {k: v for k, v in params.to_dict().items() if v not in (None, "") and k not in ("prompt", "seed")}
        await self._app.store.set_image_defaults(chat, stored or None)

    async def chat_settings(self, user: UserRef, chat: ChatRef) -> ChatSettings:
        await self._access.check(user, chat)
        options = await self._app.store.get_chat_options(chat)
        defaults = None if not options.image_defaults else ImageParams.from_dict({"prompt": "", **options.image_defaults})
        return ChatSettings(options.persona, await self._reasoning_mode(chat), defaults)

    async def _reasoning_mode(self, chat: ChatRef) -> ReasoningMode:
        stored = (await self._app.store.get_chat_options(chat)).reasoning_mode
        for mode in REASONING_MODES:
            if stored == mode:
                return mode
        return self._app.settings.reasoning_mode

    # ------------------------------------------------------------------ limits
    async def usage(self, user: UserRef, chat: ChatRef) -> UsageReport:
        await self._access.check(user, chat)
        return _usage_report(await self._app.limits.usage(user))

    async def limits_show(self, requester: UserRef, user_key: str) -> UsageReport:
        return _usage_report(await self._app.limits.show(requester, user_key))

    async def limits_set(
        self,
        requester: UserRef,
        user_key: str,
        *,
        chat_per_window: int | None = None,
        images_per_day: int | None = None,
    ) -> UsageReport:
        report = await self._app.limits.set(
            requester, user_key, chat_per_window=chat_per_window, images_per_day=images_per_day
        )
        return _usage_report(report)

    async def limits_reset(self, requester: UserRef, user_key: str) -> UsageReport:
        return _usage_report(await self._app.limits.reset(requester, user_key))

    # ------------------------------------------------------------------ admins, blocks
    async def is_admin(self, user: UserRef) -> bool:
        return await self._access.is_admin(user.key)

    async def admins_add(self, requester: UserRef, user_key: str) -> str:
        return await self._access.add_admin(requester, user_key)

    async def admins_remove(self, requester: UserRef, user_key: str) -> str:
        return await self._access.remove_admin(requester, user_key)

    async def admins_list(self, requester: UserRef) -> list[str]:
        return await self._access.admins(requester)

    async def block(self, requester: UserRef, user_key: str) -> str:
        return await self._access.block(requester, user_key)

    async def unblock(self, requester: UserRef, user_key: str) -> str:
        return await self._access.unblock(requester, user_key)

    async def blocked_list(self, requester: UserRef) -> list[str]:
        return await self._access.blocked(requester)

    # ------------------------------------------------------------------ delivery
    async def record_delivery(self, job_id: str, key: str, value: str | int | list[int] | list[str]) -> None:
        """Remember where part of a reply was posted (e.g. the message being edited),
        so that after a restart the adapter edits it instead of posting again."""
        await self._app.store.record_delivery(job_id, key, value)

    async def mark_delivered(self, job_id: str) -> None:
        """The turn's final reply is posted: it is never listed as undelivered again."""
        await self._app.store.mark_delivered(job_id, time.time())
        self._claimed.add(job_id)

    async def claim_undelivered(self, platform: str) -> list[UndeliveredTurn]:
        """Turns of ``platform`` whose reply was never marked delivered (finished while
        the adapter was down, or still running), each handed out once per process:
        resume each, post its reply, then ``mark_delivered``."""
        since = time.time() - DELIVERY_HORIZON_S
        claimed: list[UndeliveredTurn] = []
        for job in await self._app.store.undelivered_jobs(platform, since):
            if job.id in self._claimed or job.payload.get("parent_job_id"):
                continue  # live in this process, or part of its chat job's turn
            self._claimed.add(job.id)
            claimed.append(UndeliveredTurn(job.id, job.kind, job.state, job.user, job.chat, dict(job.delivery)))
        return claimed

    # ------------------------------------------------------------------ platform updates
    async def remember_updates(self, platform: str, items: Sequence[tuple[int, str]]) -> set[int]:
        """Make fetched platform updates durable (``(update_id, payload JSON)`` each)
        before the platform may consider them delivered; returns the ids seen for the
        first time. Any other id was stored before: handled already, or waiting for the
        replay at start, so the caller drops it (a duplicate is never processed twice)."""
        now = time.time()
        # prune first: after a week without updates Telegram may restart its ids at
        # random, and a stale handled row must not turn a new update into a "duplicate"
        if now - self._updates_pruned_at >= UPDATE_PRUNE_EVERY_S:
            self._updates_pruned_at = now
            await self._app.store.prune_updates(now - UPDATE_HORIZON_S)
        return set(await self._app.store.remember_updates(platform, items, now))

    async def unhandled_updates(self, platform: str) -> list[tuple[int, str]]:
        """Updates remembered but never marked handled (a crash came between), oldest
        first: replay each once at start, then ``update_handled``."""
        return await self._app.store.unhandled_updates(platform)

    async def try_update(self, platform: str, update_id: int) -> bool:
        """Count one more try at handling a remembered update, committed before its
        handler runs (so a try that kills the process counts too). False once it was
        tried ``UPDATE_MAX_ATTEMPTS`` times: give it up (``update_abandoned``) instead
        of running it again. An update never remembered is simply handled."""
        return await self._app.store.count_update_attempt(platform, update_id) <= UPDATE_MAX_ATTEMPTS

    async def update_handled(self, platform: str, update_id: int, replies: str | None = None) -> None:
        """The update's handler finished (its job is queued durably): it is never
        replayed. ``replies``: the one-off replies it produced (the adapter's JSON),
        committed with the mark, so a crash before they are sent does not lose them:
        send them, then ``replies_sent``; ``unsent_replies`` lists them after a restart."""
        await self._app.store.mark_update_handled(platform, update_id, time.time(), replies=replies)

    async def update_abandoned(self, platform: str, update_id: int, replies: str | None = None) -> None:
        """Give the update up (``try_update`` said so): never handled or replayed again;
        ``replies`` (telling the user) as for ``update_handled``."""
        await self._app.store.mark_update_handled(platform, update_id, time.time(), replies=replies, abandoned=True)

    async def unsent_replies(self, platform: str) -> list[tuple[int, str]]:
        """``(update_id, replies)`` stored with a handled update and not sent yet (a
        crash or a stop came between), oldest first: send each, then ``replies_sent``."""
        return await self._app.store.unsent_replies(platform)

    async def replies_sent(self, platform: str, update_id: int) -> None:
        await self._app.store.mark_replies_sent(platform, update_id)

    # ------------------------------------------------------------------ health
    def register_adapter(self, name: str, health: AdapterHealth) -> None:
        """Report this adapter in ``readiness()`` (and so in /ready)."""
        self._adapters[name] = health

    def unregister_adapter(self, name: str) -> None:
        self._adapters.pop(name, None)

    def adapter_health(self) -> dict[str, Check]:
        return {name: health() for name, health in self._adapters.items()}

    async def readiness(self) -> Readiness:
        """Engines, database, queue, and every registered adapter."""
        from ovbot.core.app import Readiness

        base = await self._app.readiness()
        checks = dict(base.checks)
        for name, check in self.adapter_health().items():
            checks[f"adapter_{name}"] = check
        return Readiness(checks, base.depth)

    # ------------------------------------------------------------------ internals
    async def _may_see(self, owner_key: str, requester: UserRef) -> bool:
        mine = owner_key == requester.key or owner_key.startswith(requester.key + ":")
        return mine or await self._access.is_admin(requester.key)

    async def _visible_job(self, job_id: str, requester: UserRef) -> Job:
        job = await self._app.store.get_job(job_id)
        if job is None or not await self._may_see(job.user.key, requester):
            raise NotFound(NO_SUCH_JOB)
        return job

    def _status(self, job: Job) -> JobStatus:
        live = None if job.state.terminal else self._app.queue.position(job.id)
        progress = self._app.progress(job.id) or {}
        result: dict[str, Any] = job.result or {}
        error: dict[str, Any] = job.error or {}
        chat = job.kind is JobKind.CHAT
        return JobStatus(
            job_id=job.id,
            kind=job.kind,
            state=job.state,
            user=job.user,
            chat=job.chat,
            position=live.position if live else None,
            eta_s=None if live is None or live.eta_s is None else round(live.eta_s, 1),
            progress_step=progress.get("step"),
            progress_total=progress.get("total"),
            text=str(result["text"]) if chat and "text" in result else None,
            reasoning=result.get("reasoning") if chat else None,
            image_job_id=result.get("image_job_id") if chat else job.id,
            image_id=None if chat else result.get("image_id"),
            image_params=None if chat else result.get("params"),
            note=result.get("image_note"),
            error_kind=error.get("kind"),
            error_message=error.get("message"),
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
        )


def _with_defaults(params: ImageParams, defaults: ImageParams) -> ImageParams:
    """``params`` with every unset field taken from ``defaults``."""
    chosen = {
        f.name: getattr(params, f.name) if getattr(params, f.name) not in (None, "") else getattr(defaults, f.name)
        for f in fields(ImageParams)
    }
    return ImageParams(**chosen)


def _limit_usage(data: dict[str, Any]) -> LimitUsage:
    return LimitUsage(
        limit=data["limit"],
        window_s=float(data["window_s"]),
        used=int(data["used"]),
        remaining=data["remaining"],
        reset_in_s=data["reset_in_s"],
        overridden=bool(data["overridden"]),
    )


def _usage_report(report: dict[str, Any]) -> UsageReport:
    override = report.get("override") or {}
    defaults = report.get("defaults") or {}
    return UsageReport(
        user_key=str(report["user"]),
        admin=bool(report["admin"]),
        chat=_limit_usage(report["chat"]),
        image=_limit_usage(report["image"]),
        override_chat_per_window=override.get("chat_per_window"),
        override_images_per_day=override.get("images_per_day"),
        default_chat_per_window=defaults.get("chat_per_window"),
        default_images_per_day=defaults.get("images_per_day"),
    )
