"""API keys and the identities they namespace.

A key is a tenant: everything one key creates (users, conversations, jobs, images) is
namespaced by the key's id, so two integrations that both have a user "alice" never
share a conversation or see each other's jobs. The key id is a short one-way hash:
it appears in user keys, the database and logs, and never lets anyone recover the key.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import SecretStr

from ovbot.core.domain import ChatRef, UserRef

from ovbot.adapters.http.errors import ApiError

PLATFORM = "http"
#: the key id of every client when no keys are configured (loopback only, by settings)
LOCAL_KEY_ID = "local"


def key_id(key: str) -> str:
    """12 hex characters of a domain-separated SHA-256: stable across restarts, short
    enough for logs, useless for guessing the key (keys are 16+ random characters)."""
    return hashlib.sha256(b"ovbot-http-api-key\0" + key.encode()).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is calling: the key's id; user and chat refs are derived per request."""

    key_id: str

    def user(self, user_id: str) -> UserRef:
        return UserRef(PLATFORM, f"{self.key_id}:{user_id}")

    def tenant(self) -> UserRef:
        """The key itself as a requester: its key is a prefix of every user's it made,
        so the core lets it see (not act for) all of them."""
        return UserRef(PLATFORM, self.key_id)

    def chat(self, user_id: str, conversation_id: str | None) -> ChatRef:
        """A conversation belongs to its user: another user's conversation id names a
        conversation of the caller's own (ids cannot contain '/')."""
        suffix = f"/{conversation_id}" if conversation_id else ""
        return ChatRef(PLATFORM, f"{self.key_id}:{user_id}{suffix}")


class KeyChecker:
    """Checks the key of ``Authorization: Bearer <key>`` against the configured keys."""

    def __init__(self, keys: Sequence[SecretStr]) -> None:
        # compare digests, not keys: constant time and no key kept in a second place
        self._digests = [
            (hashlib.sha256(key.get_secret_value().encode()).digest(), key_id(key.get_secret_value()))
            for key in keys
        ]

    @property
    def required(self) -> bool:
        return bool(self._digests)

    def identify(self, presented: str | None) -> Identity:
        """``presented``: the bearer credential, None when the header is missing."""
        if not self._digests:
            return Identity(LOCAL_KEY_ID)
        if not presented or not presented.strip():
            raise ApiError("unauthorized", "This API needs a key: send the header 'Authorization: Bearer <key>'.")
        digest = hashlib.sha256(presented.strip().encode()).digest()
        found = None
        for known, ident in self._digests:
            if hmac.compare_digest(digest, known):
                found = ident
        if found is None:
            raise ApiError("unauthorized", "The API key is not valid.")
        return Identity(found)
