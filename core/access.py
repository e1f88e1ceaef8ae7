"""Who may use the bot, and who may run it: the one place that decides admin rights,
allow-lists and blocks.

Admins are the configured ones (``OVBOT_ADMINS``) plus those added at run time (stored).
Allow-lists come from settings, per platform: a platform named in ``OVBOT_ALLOWED_USERS``
or ``OVBOT_ALLOWED_ROLES`` admits only the users listed for it and those holding a role
listed for it (the platform reports a user's roles in ``UserRef.roles``), one named in
``OVBOT_ALLOWED_CHATS`` answers only in the chats (or guilds) listed for it; platforms
not named stay open. Blocks are stored and
apply everywhere. Admins pass every list and cannot be blocked, so a bot can never lock
out the people who run it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ovbot.core.domain import ChatRef, UserRef
from ovbot.core.errors import Forbidden, InvalidInput
from ovbot.core.store.base import Store

USER_KEY_MAX = 200

NOT_ALLOWED_USER = "Sorry, this bot is private: you are not on its list of users. Ask its admin to add you."
NOT_ALLOWED_CHAT = "Sorry, this bot does not answer in this chat. Ask its admin to allow it here."
BLOCKED = "You have been blocked from using this bot."
ADMINS_ONLY = "Only the bot's admins can do that."


def check_user_key(user_key: str) -> str:
    """A user named in an admin command: ``platform:user_id``, printable, bounded."""
    key = str(user_key).strip()
    platform, _, user_id = key.partition(":")
    if (
        not platform.isalpha()
        or not platform.islower()
        or not user_id
        or len(key) > USER_KEY_MAX
        or not key.isprintable()
        or any(c.isspace() for c in key)
    ):
        shown = key[:40] + ("…" if len(key) > 40 else "")
        raise InvalidInput("user", f"{shown!r} is not platform:user_id (e.g. telegram:123)")
    return key


def _by_platform(entries: Iterable[str]) -> dict[str, frozenset[str]]:
    grouped: dict[str, set[str]] = {}
    for entry in entries:
        platform, _, ident = entry.partition(":")
        grouped.setdefault(platform, set()).add(ident)
    return {platform: frozenset(ids) for platform, ids in grouped.items()}


class AccessControl:
    def __init__(
        self,
        store: Store,
        *,
        admins: Sequence[str] = (),
        allowed_users: Sequence[str] = (),
        allowed_chats: Sequence[str] = (),
        allowed_roles: Sequence[str] = (),
    ) -> None:
        self._store = store
        self._configured_admins = frozenset(admins)
        self._users = _by_platform(allowed_users)
        self._chats = _by_platform(allowed_chats)
        self._roles = _by_platform(allowed_roles)

    async def is_admin(self, user_key: str) -> bool:
        return user_key in self._configured_admins or await self._store.is_admin(user_key)

    async def require_admin(self, requester: UserRef) -> None:
        if not await self.is_admin(requester.key):
            raise Forbidden(ADMINS_ONLY)

    async def check(self, user: UserRef, chat: ChatRef) -> None:
        """Raise Forbidden (with the reply the user gets) unless ``user`` may use the
        bot in ``chat``."""
        if await self.is_admin(user.key):
            return
        if await self._store.is_blocked(user.key):
            raise Forbidden(BLOCKED)
        allowed_users = self._users.get(user.platform)
        allowed_roles = self._roles.get(user.platform)
        if allowed_users is not None or allowed_roles is not None:
            listed = allowed_users is not None and user.user_id in allowed_users
            if not listed and not (allowed_roles or frozenset()) & user.roles:
                raise Forbidden(NOT_ALLOWED_USER)
        allowed_chats = self._chats.get(chat.platform)
        if allowed_chats is not None and not {chat.chat_id, chat.parent_id} & allowed_chats:
            raise Forbidden(NOT_ALLOWED_CHAT)

    # ------------------------------------------------------------------ admin operations
    async def add_admin(self, requester: UserRef, user_key: str) -> str:
        await self.require_admin(requester)
        key = check_user_key(user_key)
        await self._store.unblock_user(key)
        await self._store.add_admin(key)
        return key

    async def remove_admin(self, requester: UserRef, user_key: str) -> str:
        await self.require_admin(requester)
        key = check_user_key(user_key)
        if key in self._configured_admins:
            raise InvalidInput("user", f"{key} is an admin by the OVBOT_ADMINS setting; change it there")
        if key == requester.key:
            raise InvalidInput("user", "you cannot remove yourself; ask another admin")
        await self._store.remove_admin(key)
        return key

    async def admins(self, requester: UserRef) -> list[str]:
        await self.require_admin(requester)
        return sorted(self._configured_admins | set(await self._store.list_admins()))

    async def block(self, requester: UserRef, user_key: str) -> str:
        await self.require_admin(requester)
        key = check_user_key(user_key)
        if await self.is_admin(key):
            raise InvalidInput("user", f"{key} is an admin; remove them from the admins first")
        await self._store.block_user(key, requester.key)
        return key

    async def unblock(self, requester: UserRef, user_key: str) -> str:
        await self.require_admin(requester)
        key = check_user_key(user_key)
        await self._store.unblock_user(key)
        return key

    async def blocked(self, requester: UserRef) -> list[str]:
        await self.require_admin(requester)
        return await self._store.list_blocked()
