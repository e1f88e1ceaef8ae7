"""Updates in, facade calls out: the translation from Telegram to ``ovbot.core.bot.Bot``.

Each handler reads who wrote what where, calls the facade, and answers with what the
facade returned; who may do what, which conversation, which limits, is the core's (a
refusal is a typed error, answered in one place: ``_answer_error``). The adapter decides
only what is Telegram's business: in a group, plain text is for the bot only when it
mentions the bot or replies to one of its messages (commands always are, unless they
name another bot); messages from bots, edits and channel posts are not turns.

Message text is never logged: only chat ids and what kind of update failed.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from telegram import Chat, Message, MessageEntity, Update, User
from telegram.ext import CallbackQueryHandler, CommandHandler, ContextTypes, MessageHandler, filters

from ovbot.adapters.common.replies import queue_text, unknown_command_text, usage_text
from ovbot.adapters.telegram.build import TelegramApp
from ovbot.adapters.telegram.commands import (
    COMMAND_NAMES,
    CommandText,
    LimitsArgs,
    parse_admins,
    parse_block,
    parse_chat,
    parse_command,
    parse_imagine,
    parse_limits,
    parse_persona,
    parse_reset,
    parse_think,
)
from ovbot.adapters.telegram.config import CALLBACK_ANSWER_LIMIT, PLATFORM
from ovbot.adapters.telegram.delivery import Deliveries, Origin
from ovbot.adapters.telegram.errors import error_reply, where
from ovbot.adapters.telegram.outbox import ChatGone, Outbox, Place, place_of
from ovbot.adapters.telegram.texts import (
    NOT_TEXT,
    REROLLING,
    admins_text,
    cancelled_text,
    help_text,
    persona_text,
    reroll_job_id,
    reset_text,
    think_text,
)
from ovbot.core.bot import Bot, TurnOptions
from ovbot.core.domain import ChatRef, UserRef
from ovbot.core.durations import DAY_S, window_text
from ovbot.core.errors import InvalidInput, OvbotError
from ovbot.core.turns import UsageReport

log = logging.getLogger("ovbot.telegram")

Context = ContextTypes.DEFAULT_TYPE
Handler = Callable[[Update, Context], Awaitable[None]]
#: what the bot takes: new messages and button presses (not edits, not channel posts)
ALLOWED_UPDATES = [Update.MESSAGE, Update.CALLBACK_QUERY]


def user_ref(user: User) -> UserRef:
    return UserRef(PLATFORM, str(user.id), user.full_name)


def chat_ref(chat: Chat) -> ChatRef:
    return ChatRef(PLATFORM, str(chat.id))


class Handlers:
    def __init__(self, bot: Bot, outbox: Outbox, deliveries: Deliveries) -> None:
        self._bot = bot
        self._outbox = outbox
        self._deliveries = deliveries
        self._commands: dict[str, Callable[[Message, str, Context], Awaitable[None]]] = {
            "start": self._start,
            "help": self._help,
            "chat": self._chat,
            "imagine": self._imagine,
            "reset": self._reset,
            "persona": self._persona,
            "think": self._think,
            "queue": self._queue,
            "cancel": self._cancel,
            "usage": self._usage,
            "limits": self._limits,
            "admins": self._admins,
            "block": self._block,
            "unblock": self._unblock,
        }
        assert set(self._commands) == COMMAND_NAMES

    def register(self, application: TelegramApp) -> None:
        new_messages = filters.UpdateType.MESSAGE
        application.add_handler(
            CommandHandler(sorted(COMMAND_NAMES), self._guarded(self._on_command), filters=new_messages)
        )
        application.add_handler(MessageHandler(new_messages & filters.COMMAND, self._guarded(self._on_unknown)))
        application.add_handler(MessageHandler(new_messages & filters.TEXT, self._guarded(self._on_text)))
        application.add_handler(
            MessageHandler(new_messages & filters.ChatType.PRIVATE & ~filters.TEXT, self._guarded(self._on_other))
        )
        application.add_handler(CallbackQueryHandler(self._guarded(self._on_button)))
        application.add_error_handler(self._on_error)

    # ------------------------------------------------------------------ the one error place
    def _guarded(self, handler: Handler) -> Handler:
        async def guarded(update: Update, context: Context) -> None:
            try:
                await handler(update, context)
            except ChatGone:
                pass  # the chat refused the bot; nothing to say there
            except Exception as exc:
                if not isinstance(exc, OvbotError):  # a bug: the user still gets an answer
                    log.error("an update (%s) could not be handled: %s", _kind(update), where(exc))
                await self._answer_error(update, exc)

        return guarded

    async def _answer_error(self, update: Update, exc: BaseException) -> None:
        """Every failure of a handler reaches the user here, once, as one clear reply."""
        text = error_reply(exc)
        if update.callback_query is not None:
            short = _shorten(text, CALLBACK_ANSWER_LIMIT)
            await self._outbox.answer_callback(update.callback_query.id, short, alert=True)
        elif update.effective_message is not None:
            self._outbox.post(place_of(update.effective_message), text)
        else:
            log.info("an error in update of chat %s had nowhere to go", _chat_id(update))

    async def _on_error(self, update: object, context: Context) -> None:
        """Errors python-telegram-bot caught outside the guarded handlers."""
        log.warning("telegram: %s", type(context.error).__name__ if context.error else "unknown error")

    # ------------------------------------------------------------------ messages
    async def _on_text(self, update: Update, context: Context) -> None:
        message = update.message
        if message is None or message.text is None or not _from_a_person(message):
            return
        text = message.text
        if message.chat.type != Chat.PRIVATE:
            addressed, text = _addressed(message, context.bot.username, context.bot.id)
            if not addressed:
                return
        await self._submit(message, text, show_reasoning=False)

    async def _on_other(self, update: Update, context: Context) -> None:
        message = update.message
        if message is not None and _from_a_person(message):
            await self._reply(message, NOT_TEXT)

    async def _on_command(self, update: Update, context: Context) -> None:
        found = _command_from_a_person(update)
        if found is None:
            return
        message, command = found
        self._outbox.reopen(message.chat.id)
        await self._commands[command.name](message, command.rest, context)

    async def _on_unknown(self, update: Update, context: Context) -> None:
        found = _command_from_a_person(update)
        if found is None:
            return
        message, command = found
        if command.addressee is not None and command.addressee.lower() != (context.bot.username or "").lower():
            return  # another bot's command
        if message.chat.type != Chat.PRIVATE and command.addressee is None:
            return  # in a group it may be any bot's: only answer when named
        await self._reply(message, unknown_command_text("/" + command.name))

    async def _on_button(self, update: Update, context: Context) -> None:
        query = update.callback_query
        if query is None:
            return
        job_id = reroll_job_id(query.data)
        message = query.message
        if job_id is None or not isinstance(message, Message):
            await self._outbox.answer_callback(query.id)
            return
        handle = await self._bot.reroll(job_id, user_ref(query.from_user), chat_ref(message.chat))
        await self._outbox.answer_callback(query.id, REROLLING)
        self._outbox.reopen(message.chat.id)
        thread = message.message_thread_id if message.is_topic_message else None
        origin = Origin(Place(message.chat.id, thread, message.message_id), as_file=message.document is not None)
        await self._deliveries.start_turn(handle, origin)

    # ------------------------------------------------------------------ turns
    async def _submit(self, message: Message, text: str, *, show_reasoning: bool) -> None:
        assert message.from_user is not None
        self._outbox.reopen(message.chat.id)
        handle = await self._bot.submit_turn(
            user_ref(message.from_user), chat_ref(message.chat), text, TurnOptions(show_reasoning=show_reasoning)
        )
        await self._deliveries.start_turn(handle, Origin(place_of(message), show_reasoning=show_reasoning))

    async def _chat(self, message: Message, rest: str, context: Context) -> None:
        args = parse_chat(rest)
        await self._submit(message, args.text, show_reasoning=args.show_reasoning)

    async def _imagine(self, message: Message, rest: str, context: Context) -> None:
        args = parse_imagine(rest)
        user, chat = _refs(message)
        handle = await self._bot.imagine(user, chat, args.params)
        await self._deliveries.start_turn(handle, Origin(place_of(message), as_file=args.as_file))

    # ------------------------------------------------------------------ commands with a reply
    async def _start(self, message: Message, rest: str, context: Context) -> None:
        await self._help(message, rest, context)

    async def _help(self, message: Message, rest: str, context: Context) -> None:
        user, _ = _refs(message)
        admin = await self._bot.is_admin(user)
        await self._reply(message, help_text(admin=admin, group=message.chat.type != Chat.PRIVATE))

    async def _reset(self, message: Message, rest: str, context: Context) -> None:
        forget = parse_reset(rest)
        await self._bot.reset(*_refs(message), forget=forget)
        await self._reply(message, reset_text(forget))

    async def _persona(self, message: Message, rest: str, context: Context) -> None:
        args = parse_persona(rest)
        user, chat = _refs(message)
        if args.action == "show":
            settings = await self._bot.chat_settings(user, chat)
            await self._reply(message, persona_text(settings.persona, changed=False))
            return
        await self._bot.set_persona(user, chat, args.text)
        await self._reply(message, persona_text(args.text, changed=True))

    async def _think(self, message: Message, rest: str, context: Context) -> None:
        args = parse_think(rest)
        user, chat = _refs(message)
        if args.show:
            settings = await self._bot.chat_settings(user, chat)
            await self._reply(message, think_text(settings.reasoning, changed=False))
            return
        mode = await self._bot.set_reasoning(user, chat, args.mode)
        await self._reply(message, think_text(mode, changed=True))

    async def _queue(self, message: Message, rest: str, context: Context) -> None:
        await self._reply(message, queue_text(await self._bot.queue(*_refs(message))))

    async def _cancel(self, message: Message, rest: str, context: Context) -> None:
        cancelled = await self._bot.cancel_mine(*_refs(message))
        await self._reply(message, cancelled_text(len(cancelled)))

    async def _usage(self, message: Message, rest: str, context: Context) -> None:
        await self._reply(message, usage_text(await self._bot.usage(*_refs(message))))

    # ------------------------------------------------------------------ admin commands
    async def _limits(self, message: Message, rest: str, context: Context) -> None:
        args = parse_limits(rest, _replied_user(message))
        user, _ = _refs(message)
        if args.action == "show":
            report = await self._bot.limits_show(user, args.user_key)
        elif args.action == "reset":
            report = await self._bot.limits_reset(user, args.user_key)
        else:
            if args.chat_period_s is not None:
                _check_window("chat", args, await self._bot.limits_show(user, args.user_key))
            if args.images_period_s is not None and args.images_period_s != DAY_S:
                raise InvalidInput("images", "pictures are counted per day: write images=N or images=N/day")
            report = await self._bot.limits_set(
                user, args.user_key, chat_per_window=args.chat_per_window, images_per_day=args.images_per_day
            )
        await self._reply(message, usage_text(report))

    async def _admins(self, message: Message, rest: str, context: Context) -> None:
        args = parse_admins(rest, _replied_user(message))
        user, _ = _refs(message)
        if args.action == "list" or args.user_key is None:
            await self._reply(message, admins_text(await self._bot.admins_list(user)))
        elif args.action == "add":
            await self._reply(message, f"✅ {await self._bot.admins_add(user, args.user_key)} is an admin now.")
        else:
            removed = await self._bot.admins_remove(user, args.user_key)
            await self._reply(message, f"✅ {removed} is no admin any more.")

    async def _block(self, message: Message, rest: str, context: Context) -> None:
        key = parse_block(rest, _replied_user(message))
        await self._reply(message, f"⛔ Blocked {await self._bot.block(_refs(message)[0], key)}.")

    async def _unblock(self, message: Message, rest: str, context: Context) -> None:
        key = parse_block(rest, _replied_user(message))
        await self._reply(message, f"✅ Unblocked {await self._bot.unblock(_refs(message)[0], key)}.")

    async def _reply(self, message: Message, text: str) -> None:
        self._outbox.post(place_of(message), text)


# ---------------------------------------------------------------- helpers


def _refs(message: Message) -> tuple[UserRef, ChatRef]:
    assert message.from_user is not None
    return user_ref(message.from_user), chat_ref(message.chat)


def _command_from_a_person(update: Update) -> tuple[Message, CommandText] | None:
    """The message and its command, if a person (not a bot) sent a command."""
    message = update.message
    if message is None or message.text is None or not _from_a_person(message):
        return None
    command = parse_command(message.text)
    return None if command is None else (message, command)


def _from_a_person(message: Message) -> bool:
    return message.from_user is not None and not message.from_user.is_bot and message.chat.type != Chat.CHANNEL


def _replied_user(message: Message) -> int | None:
    replied = message.reply_to_message
    if replied is None or replied.from_user is None:
        return None
    return replied.from_user.id


def _addressed(message: Message, username: str | None, bot_id: int) -> tuple[bool, str]:
    """Whether a group message is for the bot (it mentions the bot or replies to one of
    its messages), and its text without the mention."""
    text = message.text or ""
    replied = message.reply_to_message
    addressed = replied is not None and replied.from_user is not None and replied.from_user.id == bot_id
    mine = f"@{username}".lower() if username else None
    spans: list[MessageEntity] = []
    for entity, value in message.parse_entities([MessageEntity.MENTION, MessageEntity.TEXT_MENTION]).items():
        if (entity.type == MessageEntity.MENTION and value.lower() == mine) or (
            entity.type == MessageEntity.TEXT_MENTION and entity.user is not None and entity.user.id == bot_id
        ):
            spans.append(entity)
    if spans:
        addressed = True
        text = _without(text, spans)
    return addressed, text.strip()


def _without(text: str, entities: list[MessageEntity]) -> str:
    """``text`` with the entities' spans cut out (their offsets count UTF-16 units)."""
    units = text.encode("utf-16-le")
    for entity in sorted(entities, key=lambda e: e.offset, reverse=True):
        units = units[: 2 * entity.offset] + units[2 * (entity.offset + entity.length) :]
    return units.decode("utf-16-le")


def _check_window(name: str, args: LimitsArgs, report: UsageReport) -> None:
    """``chat=N/period``: the core counts chat turns per its configured window; a period
    that is not that window cannot be set, and is refused rather than converted."""
    window = report.chat.window_s
    if args.chat_period_s is not None and abs(args.chat_period_s - window) > 1e-6:
        raise InvalidInput(
            name,
            f"chat messages are counted per {window_text(window)} (OVBOT_CHAT_WINDOW_S): "
            f"write chat={args.chat_per_window} or chat={args.chat_per_window}/{window_text(window)}",
        )


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _kind(update: Update) -> str:
    if update.callback_query is not None:
        return "button"
    return "message" if update.message is not None else "update"


def _chat_id(update: Update) -> int | None:
    return update.effective_chat.id if update.effective_chat is not None else None
