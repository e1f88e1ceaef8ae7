"""The Discord acknowledgement table: how close ovbot comes to Discord's 3-second rule.

Discord drops an interaction (the user sees "The application did not respond") unless
its first answer, a deferral or a reply, arrives within 3 s of the event. ovbot first
stores the turn (the job row, durable) and then defers, so under load every deferral
waits for its turn on the store. Measured here: the real discord.py client of the
adapter, against the fake Discord (``tests/fakes/fake_discord.py``) on 127.0.0.1, the
real App (SQLite, durable queue, engine worker process) on the tiny models. A burst of
``/chat`` and ``/imagine`` commands from many users is sent at once while slow pictures
keep the engine busy; for each interaction, the time from the fake sending its
``INTERACTION_CREATE`` to the fake receiving its first callback.

The fake runs on the bot's event loop (as in the tests), so its own work is counted in
the figures: they are an upper bound of what the bot adds.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import Target, fmt, percentile, table

if TYPE_CHECKING:
    from ovbot.adapters.discord import DiscordOptions
    from tests.fakes.fake_discord import FakeDiscord, FakeInteraction, FakeUser

#: Discord's rule: the first answer to an interaction within 3 s of the event
DEADLINE_S = 3.0
GUILD = 111
CHANNEL = 1111
#: callback type 5: "deferred, thinking"; 4: answered at once (a refusal, say)
DEFERRED = 5


@dataclass(frozen=True)
class AckConfig:
    #: bursts: (interactions, users), each run with a fresh App
    bursts: tuple[tuple[int, int], ...] = ((50, 10), (100, 25))
    #: every n-th interaction of a burst is an /imagine, the rest /chat
    image_every: int = 3
    image_steps: int = 2
    #: slow pictures started before the burst, so the engine is busy when it arrives
    busy_images: int = 2
    busy_steps: int = 300
    max_new_tokens: int = 48
    #: how long the turns may take to finish after the burst
    finish_timeout_s: float = 300.0


def smoke_ack_config() -> AckConfig:
    return AckConfig(bursts=((12, 4),), busy_images=1, busy_steps=40, max_new_tokens=16, finish_timeout_s=120.0)


@dataclass
class AckRun:
    label: str
    users: int
    #: seconds from dispatch to the first callback, per acknowledged interaction
    ack_s: list[float]
    sent: int
    deferred: int
    #: no callback at all (given a generous wait past the deadline)
    missed: int
    #: turns whose reply was final when the run ended
    finished: int

    @property
    def late(self) -> int:
        return sum(1 for value in self.ack_s if value > DEADLINE_S)


def settings_overrides(cfg: AckConfig, interactions: int) -> dict[str, Any]:
    """Limits high enough that every command of a burst is accepted: the slow path
    (a job stored, then the deferral) is the one measured."""
    return dict(
        max_queued_per_user=interactions + cfg.busy_images,
        max_queued_total=interactions + cfg.busy_images + 10,
        chat_turns_per_window=interactions * 2,
        images_per_day=interactions * 2,
        image_max_steps=max(cfg.busy_steps, cfg.image_steps),
    )


def burst_users(count: int, first_id: int = 7_000_000) -> list[FakeUser]:
    from tests.fakes.fake_discord import FakeUser

    return [FakeUser(first_id + n, f"user{n}") for n in range(count)]


async def _send(fake: FakeDiscord, number: int, user: FakeUser, cfg: AckConfig) -> FakeInteraction:
    if number % cfg.image_every == cfg.image_every - 1:
        options: dict[str, Any] = {"prompt": f"a lighthouse at dusk, number {number}", "steps": cfg.image_steps}
        return await fake.slash("imagine", options, user=user, channel_id=CHANNEL, guild_id=GUILD)
    return await fake.slash("chat", {"message": f"question number {number}: what is a lighthouse?"}, user=user,
                            channel_id=CHANNEL, guild_id=GUILD)


async def burst(fake: FakeDiscord, users: Sequence[FakeUser], interactions: int, cfg: AckConfig, label: str) -> AckRun:
    """Busy the engine, send ``interactions`` commands round-robin over ``users`` at
    once, and time each one's first callback; then wait for the turns to finish."""
    busy = [
        await fake.slash("imagine", {"prompt": f"a slow picture {n}", "steps": cfg.busy_steps}, user=users[0],
                         channel_id=CHANNEL, guild_id=GUILD)
        for n in range(cfg.busy_images)
    ]
    await fake.wait_for(lambda: all(i.acknowledged_at for i in busy), 30.0, what="the slow pictures deferred")
    sent = [await _send(fake, n, users[n % len(users)], cfg) for n in range(interactions)]
    give_up = time.monotonic() + DEADLINE_S * 5  # far past the rule: a callback this late is a miss anyway
    while not all(i.acknowledged_at for i in sent) and time.monotonic() < give_up:
        await asyncio.sleep(0.05)
    deadline = time.monotonic() + cfg.finish_timeout_s
    while not all(_finished(fake, i) for i in busy + sent) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    return AckRun(
        label=label,
        users=len(users),
        ack_s=[i.ack_s for i in sent if i.ack_s is not None],
        sent=len(sent),
        deferred=sum(1 for i in sent if i.response_type == DEFERRED),
        missed=sum(1 for i in sent if i.ack_s is None),
        finished=sum(1 for i in sent if _finished(fake, i)),
    )


def _finished(fake: FakeDiscord, interaction: FakeInteraction) -> bool:
    original = fake.original(interaction.token)
    return original is not None and original.finished


# --------------------------------------------------------------------------- the bench section


def discord_settings(fake: FakeDiscord) -> dict[str, Any]:
    """The settings that point ovbot at ``fake``."""
    return dict(
        discord_token=fake.token, discord_api_base=fake.api_base, discord_gateway_url=fake.gateway_url,
        discord_guild_ids=[GUILD],
    )


@contextlib.asynccontextmanager
async def discord_app(
    settings_for: Callable[[FakeDiscord], Any], options: DiscordOptions | None = None
) -> AsyncIterator[tuple[Any, FakeDiscord]]:
    """The fake Discord, the App on ``settings_for(fake)``, the adapter connected (with
    production timings unless ``options`` says otherwise)."""
    from ovbot.adapters.discord import DiscordOptions, build_discord_adapter
    from ovbot.core.app import App
    from tests.fakes.fake_discord import FakeDiscord

    async with FakeDiscord(guilds={GUILD: [CHANNEL]}) as fake:
        app = App(settings_for(fake), stop_grace_s=5)
        await app.initialize()
        await app.start()
        try:
            options = options or DiscordOptions(guild_ready_timeout_s=0.05)
            adapter = build_discord_adapter(app.bot, app.settings, options)
            await adapter.start()
            try:
                yield app, fake
            finally:
                await adapter.stop()
        finally:
            await app.shutdown()


async def discord_ack_section(
    tiny_llm: Path, tiny_image: Path, cfg: AckConfig, log: Callable[[str], None]
) -> tuple[str, list[Target]]:
    from bench.platform import app_settings

    runs: list[AckRun] = []
    for interactions, user_count in cfg.bursts:
        log(f"discord table: {interactions} interactions from {user_count} users")
        with tempfile.TemporaryDirectory(prefix="ovbot-bench-discord-") as data_dir:
            def settings_for(fake: FakeDiscord, data_dir: str = data_dir, interactions: int = interactions) -> Any:
                return app_settings(
                    tiny_llm, tiny_image, Path(data_dir), cfg.max_new_tokens,
                    image_sizes=["64x64"], image_default_size="64x64", image_default_steps=cfg.image_steps,
                    kv_cache_gb=1, **settings_overrides(cfg, interactions), **discord_settings(fake),
                )

            async with discord_app(settings_for) as (_app, fake):
                label = f"{interactions} at once, {user_count} users"
                runs.append(await burst(fake, burst_users(user_count), interactions, cfg, label))
    return render(runs, cfg)


def render(runs: Sequence[AckRun], cfg: AckConfig) -> tuple[str, list[Target]]:
    rows = []
    for run in runs:
        values = run.ack_s
        rows.append([
            run.label, str(run.sent), str(len(values)), str(run.deferred),
            fmt(percentile(values, 0.5) * 1000, 0) if values else "n/a",
            fmt(percentile(values, 0.95) * 1000, 0) if values else "n/a",
            fmt(max(values) * 1000, 0) if values else "n/a",
            str(run.late + run.missed), str(run.finished),
        ])
    text = "\n\n".join([
        "### Discord acknowledgement table",
        "Discord drops an interaction whose first answer (a deferral or a reply) does not arrive within "
        f"{DEADLINE_S:g} s. The real discord.py client of the adapter against the fake Discord on 127.0.0.1, the "
        f"real App on the tiny models; {cfg.busy_images} slow picture(s) ({cfg.busy_steps} steps) keep the engine "
        f"busy while a burst of commands arrives at once (every {cfg.image_every}rd an `/imagine`, the rest "
        "`/chat`, round-robin over the users; limits raised so every one is accepted: a job is stored, then the "
        "interaction deferred). Time = from the fake sending `INTERACTION_CREATE` to it receiving the first "
        "callback; the fake shares the bot's event loop, so its own work is included.",
        table(
            ["burst", "sent", "acknowledged", "deferred", "ack p50 ms", "ack p95 ms", "ack max ms",
             "past 3 s", "replies finished"],
            rows, "lrrrrrrrr",
        ),
    ])
    missed = sum(run.late + run.missed for run in runs)
    worst = max((max(run.ack_s) for run in runs if run.ack_s), default=None)
    targets = [
        Target(
            "Discord interactions acknowledged within 3 s", "all",
            f"{missed} missed, max {fmt(worst, 2)} s", missed == 0,
        )
    ]
    return text, targets
