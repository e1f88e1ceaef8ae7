"""A finished picture as Discord shows it: the PNG as an attachment, the parameters that
made it (prompt, size, steps, CFG, seed) in an embed, so anyone can reproduce or vary
it. Embeds never ping anyone, whatever the prompt says."""

from __future__ import annotations

from collections.abc import Mapping

import discord

from ovbot.core.turns import ImageFile

#: Discord's embed limits
_DESCRIPTION_LIMIT = 4096
_FIELD_LIMIT = 1024


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def picture_file(picture: ImageFile) -> discord.File:
    """A fresh upload of the stored PNG (a File is consumed by one request)."""
    return discord.File(picture.path, filename=f"ovbot-{picture.image_id[:16]}.png")


def picture_embed(params: Mapping[str, object], filename: str) -> discord.Embed:
    prompt = str(params.get("prompt") or "")
    embed = discord.Embed(title="🎨 Picture", description=_clip(prompt, _DESCRIPTION_LIMIT) or None)
    negative = str(params.get("negative_prompt") or "")
    if negative:
        embed.add_field(name="Negative prompt", value=_clip(negative, _FIELD_LIMIT), inline=False)
    width, height = params.get("width"), params.get("height")
    if width and height:
        embed.add_field(name="Size", value=f"{width}x{height}")
    for key, name in (("steps", "Steps"), ("cfg", "CFG"), ("seed", "Seed")):
        value = params.get(key)
        if value is not None:
            embed.add_field(name=name, value=f"{value:g}" if isinstance(value, float) else str(value))
    embed.set_image(url=f"attachment://{filename}")
    return embed
