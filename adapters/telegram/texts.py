"""What the Telegram adapter says besides the live replies: help, confirmations, the
picture caption and its re-roll button. Plain text only (sent without a parse mode, so
nothing a user or the model wrote can break a message); the wording of core errors,
usage and queue views is shared with every platform in ``adapters/common/replies``."""

from __future__ import annotations

import re
from collections.abc import Mapping

from ovbot.adapters.common import utf16_length
from ovbot.adapters.telegram.commands import COMMANDS
from ovbot.adapters.telegram.config import CAPTION_LIMIT

WELCOME = (
    "👋 Hi! I am ovbot, an AI that runs privately on my owner's own computer: what you "
    "write here is not sent to any AI company."
)
UNEXPECTED = "⚠️ Something went wrong on my side. Please try again."
NOT_TEXT = "I can only read text messages."
#: an update whose handling failed (crashed the bot) every time it was tried
NOT_PROCESSED = "⚠️ Sorry, your last message could not be processed, so it was dropped. Please send it again, or try something else."
REROLL_BUTTON = "🎲 Re-roll"
REROLLING = "🎲 Re-rolling…"
REROLL_PREFIX = "reroll:"
_JOB_ID = re.compile(r"^[0-9a-f]{32}$")


def help_text(*, admin: bool, group: bool) -> str:
    """The commands, admin ones only for admins (the core says who is one)."""
    lines = [WELCOME, ""]
    if group:
        lines.append("In groups I answer /chat, a mention of me, or a reply to one of my messages.")
    else:
        lines.append("Just write to me, or use a command:")
    lines.append("")
    for spec in COMMANDS:
        if not spec.admin:
            lines.append(f"{spec.synopsis} - {spec.description}")
    if admin:
        lines += ["", "Admin commands (<user>: a numeric id, or reply to their message):"]
        lines += [f"{spec.synopsis} - {spec.description}" for spec in COMMANDS if spec.admin]
    return "\n".join(lines)


def reset_text(forget: bool) -> str:
    return "🆕 New conversation." + (" The old one is deleted." if forget else "")


def persona_text(persona: str | None, *, changed: bool) -> str:
    if persona is None:
        if changed:
            return "🎭 Persona cleared."
        return "🎭 No persona is set in this chat. Set one with /persona <text>."
    return ("🎭 Persona set: " if changed else "🎭 Persona: ") + persona


def think_text(mode: str, *, changed: bool) -> str:
    return ("🧠 Reasoning is now: " if changed else "🧠 Reasoning: ") + mode


def cancelled_text(count: int) -> str:
    if count == 0:
        return "You have nothing waiting or running here."
    return f"🚫 Cancelled {count} request{'s' if count != 1 else ''}."


def admins_text(keys: list[str]) -> str:
    return "Admins:\n" + "\n".join(keys) if keys else "No admins are set."


# ---------------------------------------------------------------- pictures


def caption_for(params: Mapping[str, object]) -> str:
    """Prompt, seed, steps, CFG and size, within Telegram's 1024-character caption limit
    (the prompts are shortened, never the numbers)."""
    numbers = (
        f"🌱 seed {params.get('seed')} · {params.get('steps')} steps · "
        f"CFG {_number(params.get('cfg'))} · {params.get('width')}x{params.get('height')}"
    )
    prompt = " ".join(str(params.get("prompt") or "").split())
    negative = " ".join(str(params.get("negative_prompt") or "").split())
    room = CAPTION_LIMIT - utf16_length(numbers) - 1
    negative_line = ""
    if negative:
        negative_line = "🚫 " + _fit(negative, max(20, room // 3))
        room -= utf16_length(negative_line) + 1
    lines = ["🎨 " + _fit(prompt, room - 3)] + ([negative_line] if negative_line else []) + [numbers]
    return "\n".join(lines)


def _number(value: object) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def _fit(text: str, room: int) -> str:
    if utf16_length(text) <= room:
        return text
    while text and utf16_length(text) > room - 1:
        text = text[:-1]
    return text.rstrip() + "…"


def reroll_data(job_id: str) -> str:
    """The re-roll button's callback data (Telegram allows 64 bytes)."""
    return REROLL_PREFIX + job_id


def reroll_job_id(data: str | None) -> str | None:
    """The picture job a re-roll button names, or None for anything else."""
    if not data or not data.startswith(REROLL_PREFIX):
        return None
    job_id = data[len(REROLL_PREFIX) :]
    return job_id if _JOB_ID.match(job_id) else None
