"""Settings, read from ``OVBOT_*`` environment variables and an optional ``.env`` file.

Validated once at start; ``load_settings`` turns pydantic's errors into one readable
line per bad value (``OVBOT_LLM_DEVICE: ...``) so a user can fix their ``.env``.
Every field here is listed, with a comment, in ``.env.example``.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from dotenv import dotenv_values
from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from typing_extensions import Annotated

from ovbot.core.engines.types import ImageLimits
from ovbot.core.errors import SettingsError

ENV_PREFIX = "OVBOT_"
#: OVBOT_* variables that tools read and that are not settings (dev.py's venv, the model
#: caches of the tests and the benchmarks): no "unknown setting" warning for them
NOT_SETTINGS = frozenset({"OVBOT_VENV", "OVBOT_TEST_MODELS_DIR", "OVBOT_BENCH_MODELS_DIR"})
log = logging.getLogger("ovbot.config")
_DEVICE = re.compile(r"^(CPU|GPU(\.\d+)?|NPU|AUTO(:[A-Z0-9.,]+)?|HETERO:[A-Z0-9.,]+)$")
_SIZE = re.compile(r"^(\d+)x(\d+)$")


def _default_models_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ovbot" / "models"


def parse_size(text: str) -> tuple[int, int]:
    """``"512x768"`` -> ``(512, 768)``; sizes must be multiples of 8 (the VAE's stride)."""
    match = _SIZE.match(text.strip().lower())
    if not match:
        raise ValueError(f"{text!r} is not a size like 512x512")
    width, height = int(match.group(1)), int(match.group(2))
    if width % 8 or height % 8 or not (64 <= width <= 2048 and 64 <= height <= 2048):
        raise ValueError(f"{text!r}: width and height must be multiples of 8 between 64 and 2048")
    return width, height


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
    )

    # ---------------------------------------------------------------- model cache
    models_dir: Path = Field(default_factory=_default_models_dir)
    llm_repo: str = "OpenVINO/DeepSeek-R1-Distill-Qwen-1.5B-int4-cw-ov"
    llm_revision: str = "main"
    image_repo: str = "OpenVINO/stable-diffusion-v1-5-int8-ov"
    image_revision: str = "main"
    llm_model_dir: Path | None = None
    image_model_dir: Path | None = None
    auto_download: bool = True
    hf_token: SecretStr | None = None
    #: verify sha256 of every file on start (slow for GB models); sizes are always checked
    verify_checksums_on_start: bool = False

    # ---------------------------------------------------------------- engines
    engine: Literal["local", "remote"] = "local"
    llm_device: str = "CPU"
    image_device: str = "CPU"
    kv_cache_gb: int = Field(default=2, ge=1, le=256)
    max_batch_sequences: int = Field(default=16, ge=1, le=256)
    # Chat pipeline tuning: "auto" leaves a value to OpenVINO (the device's own default).
    # Each one is a row of the bench's lever table (bench/LATEST.md, issue 15).
    #: prompt tokens + decoding chats processed in one scheduler step
    llm_max_batched_tokens: int = Field(default=256, ge=16, le=65536)
    #: split long prompts into chunks that share steps with chats already answering
    llm_split_fuse: bool = True
    llm_kv_cache_precision: Literal["auto", "u8", "f16", "f32"] = "auto"
    llm_inference_precision: Literal["auto", "bf16", "f16", "f32"] = "auto"
    llm_performance_hint: Literal["auto", "LATENCY", "THROUGHPUT"] = "auto"
    #: inference threads; 0 = the device default (every core)
    llm_threads: int = Field(default=0, ge=0, le=1024)
    llm_cpu_pinning: Literal["auto", "true", "false"] = "auto"
    #: group size of the dynamic quantization of activations; 0 turns it off
    llm_dynamic_quantization_group_size: Literal["auto"] | int = "auto"
    max_new_tokens: int = Field(default=1024, ge=1, le=32768)
    llm_timeout_s: float = Field(default=600.0, gt=0)
    image_timeout_s: float = Field(default=1800.0, gt=0)
    #: directory for OpenVINO's compiled-model cache (faster warm starts); empty disables
    compile_cache_dir: Path | None = None
    #: longest an image waits between two of its steps while chat is busy (anti-starvation)
    image_max_pause_s: float = Field(default=20.0, ge=0)
    worker_start_timeout_s: float = Field(default=300.0, gt=0)
    worker_max_restarts: int = Field(default=5, ge=0)

    # ---------------------------------------------------------------- image limits
    image_sizes: Annotated[list[str], NoDecode] = ["512x512", "512x768", "768x512"]
    image_default_size: str = "512x512"
    image_default_steps: int = Field(default=20, ge=1)
    image_min_steps: int = Field(default=1, ge=1)
    image_max_steps: int = Field(default=50, ge=1, le=500)
    image_default_cfg: float = Field(default=7.5, ge=0)
    image_min_cfg: float = Field(default=1.0, ge=0)
    image_max_cfg: float = Field(default=20.0, ge=0, le=100)
    image_max_prompt_chars: int = Field(default=1000, ge=1)

    # ---------------------------------------------------------------- remote engine
    remote_base_url: str | None = None
    remote_api_key: SecretStr | None = None
    remote_llm_model: str = "DeepSeek-R1-Distill-Qwen-1.5B"
    remote_image_model: str = "stable-diffusion-v1-5"
    remote_timeout_s: float = Field(default=600.0, gt=0)
    #: how the remote server delivers reasoning: auto-detect, "prompt" (the chat template
    #: opens <think>, as DeepSeek-R1's does) or "inline" (explicit tags only)
    remote_reasoning: Literal["auto", "prompt", "inline"] = "auto"

    # ---------------------------------------------------------------- data, store
    data_dir: Path = Path("data")
    #: SQLite database file; default <data_dir>/ovbot.db
    db_path: Path | None = None

    # ---------------------------------------------------------------- chat
    system_prompt: str = (
        "You are ovbot, a friendly assistant running privately on the user's own computer. "
        "Answer concisely. When the user asks for a picture, describe it in image_prompt."
    )
    history_turns: int = Field(default=10, ge=0, le=200)
    #: prompt tokens kept for history (oldest turns dropped first)
    history_token_budget: int = Field(default=2048, ge=0)
    max_message_chars: int = Field(default=4000, ge=1, le=100000)
    max_persona_chars: int = Field(default=1000, ge=1)
    #: how the model reasons before answering, per chat unless a chat chose otherwise:
    #: off (answer at once), short (reasoning bounded by reasoning_short_chars), full.
    #: "off" by measurement: the only mode whose first answer character comes within
    #: ~2 s on a 2-core CPU (bench --only reasoning)
    reasoning_mode: Literal["off", "short", "full"] = "off"
    reasoning_short_chars: int = Field(default=400, ge=1, le=100000)
    reasoning_full_chars: int = Field(default=1500, ge=1, le=100000)

    # ---------------------------------------------------------------- queue, limits
    #: chat jobs run together (they share the batched engine)
    max_running_chat: int = Field(default=8, ge=1, le=256)
    max_queued_per_user: int = Field(default=5, ge=1)
    max_queued_total: int = Field(default=200, ge=1)
    job_lease_s: float = Field(default=60.0, gt=1)
    #: starts a job gets when the engine (or the bot) dies while running it, before it fails
    job_max_attempts: int = Field(default=3, ge=1, le=100)
    #: chat turns allowed per user per window
    chat_turns_per_window: int = Field(default=30, ge=0)
    chat_window_s: float = Field(default=3600.0, gt=0)
    images_per_day: int = Field(default=20, ge=0)
    #: admins as platform:user_id, comma-separated (e.g. telegram:123,discord:456)
    admins: Annotated[list[str], NoDecode] = []
    #: who may use the bot, as platform:user_id; a platform listed here admits only
    #: these users (and admins), platforms not listed stay open
    allowed_users: Annotated[list[str], NoDecode] = []
    #: where the bot answers, as platform:chat_id (a Telegram chat, a Discord channel or
    #: guild); a platform listed here answers only in these chats (admins anywhere)
    allowed_chats: Annotated[list[str], NoDecode] = []

    # ---------------------------------------------------------------- HTTP API
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    #: API keys for the HTTP API, comma-separated; required when binding beyond loopback
    api_keys: Annotated[list[SecretStr], NoDecode] = []
    #: base URL clients use to fetch images (default http://<host>:<port>)
    public_base_url: str | None = None
    #: seconds a client gets to send a request's headers; slower ones are disconnected
    http_header_timeout_s: float = Field(default=10.0, gt=0, le=600)
    #: seconds an idle kept-alive connection stays open between requests
    http_keep_alive_s: int = Field(default=5, ge=1, le=600)
    #: open connections (or requests in flight) from which new requests get a 503
    http_max_connections: int = Field(default=512, ge=1, le=100000)
    #: Server-Sent Event streams one API key holds open at once (each holds a connection
    #: for as long as its turn runs); beyond it a new stream gets a 429 with Retry-After
    http_max_streams_per_key: int = Field(default=128, ge=1, le=100000)

    # ---------------------------------------------------------------- Telegram
    #: the bot's token from @BotFather; the Telegram adapter runs when it is set (a
    #: secret: PTB puts it in every request URL, so it is redacted from every log line)
    telegram_token: SecretStr | None = None
    #: the Bot API server root: ovbot calls {root}/bot<token>/<method> and fetches
    #: files from {root}/file/bot<token>/... (a self-hosted Bot API server, the tests)
    telegram_api_base: str = "https://api.telegram.org"
    #: how updates arrive: long polling (works behind NAT) or a webhook
    telegram_mode: Literal["polling", "webhook"] = "polling"
    #: the public https URL Telegram posts updates to (webhook mode)
    telegram_webhook_url: str | None = None
    #: where ovbot's webhook server listens (behind the reverse proxy that owns the URL)
    telegram_webhook_host: str = "127.0.0.1"
    telegram_webhook_port: int = Field(default=8443, ge=0, le=65535)
    #: checked on every webhook request (X-Telegram-Bot-Api-Secret-Token); required in
    #: webhook mode: 1-256 characters of A-Z, a-z, 0-9, _ and -
    telegram_webhook_secret: SecretStr | None = None
    #: least seconds between two messages or edits in one chat (Telegram: ~1 per second)
    telegram_chat_interval_s: float = Field(default=1.0, ge=0.1, le=60)
    #: messages and edits per minute in one group (Telegram: 20)
    telegram_group_per_minute: int = Field(default=20, ge=1, le=60)
    #: stream replies in private chats as a native draft (sendMessageDraft, Bot API 9.3+);
    #: false (or a server that refuses drafts): edit one message instead
    telegram_drafts: bool = True

    # ---------------------------------------------------------------- Discord
    #: the bot token of a Discord application; the Discord adapter runs when it is set
    #: (a secret: redacted from every log line)
    discord_token: SecretStr | None = None
    #: guilds whose slash commands are synced per guild (instant); empty: global commands
    discord_guild_ids: Annotated[list[int], NoDecode] = []
    #: the REST API base and the gateway: Discord's, or a Discord-compatible server's
    discord_api_base: str = "https://discord.com/api/v10"
    discord_gateway_url: str = "wss://gateway.discord.gg"
    #: who may use the bot by role, as platform:role_id (Discord role ids); a platform
    #: listed here (or in allowed_users) admits only listed users and role holders
    allowed_roles: Annotated[list[str], NoDecode] = []

    # ---------------------------------------------------------------- logging
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("llm_device", "image_device", mode="before")
    @classmethod
    def _check_device(cls, value: Any) -> str:
        text = str(value).strip().upper()
        if not _DEVICE.match(text):
            raise ValueError(f"must be CPU, GPU, GPU.<n>, NPU or AUTO (got {value!r})")
        return text

    @field_validator("llm_dynamic_quantization_group_size", mode="before")
    @classmethod
    def _check_group_size(cls, value: Any) -> Any:
        """One clear line instead of one per member of the union."""
        text = str(value).strip().lower()
        if text == "auto":
            return "auto"
        if isinstance(value, bool) or not text.isdigit() or int(text) > 4096:
            raise ValueError(f"must be auto or a whole number from 0 (off) to 4096, such as 32, 64 or 128 (got {value!r})")
        return int(text)

    @field_validator("image_sizes", mode="before")
    @classmethod
    def _split_sizes(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part for part in value.replace(";", ",").split(",") if part.strip()]
        for size in value:
            parse_size(size)
        if not value:
            raise ValueError("list at least one size, e.g. 512x512")
        return [s.strip().lower() for s in value]

    @field_validator("admins", "allowed_users", "allowed_chats", mode="before")
    @classmethod
    def _split_admins(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        for entry in value:
            if not re.match(r"^[a-z]+:\S+$", entry):
                raise ValueError(f"{entry!r} is not platform:user_id (e.g. telegram:123)")
        return value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        for key in value:
            text = key.get_secret_value() if isinstance(key, SecretStr) else str(key)
            if len(text) < 16:
                raise ValueError("each API key must be at least 16 characters")
        return value

    @field_validator("discord_token", mode="before")
    @classmethod
    def _discord_token(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip()
            return value or None  # OVBOT_DISCORD_TOKEN= in a .env means "not set"
        return value

    @field_validator("allowed_roles", mode="before")
    @classmethod
    def _split_roles(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        for entry in value:
            if not re.match(r"^[a-z]+:\S+$", entry):
                raise ValueError(f"{entry!r} is not platform:role_id (e.g. discord:123456789012345678)")
        return value

    @field_validator("discord_guild_ids", mode="before")
    @classmethod
    def _split_guild_ids(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        for entry in value:
            if not str(entry).isdigit():
                raise ValueError(f"{entry!r} is not a guild id (a number such as 123456789012345678)")
        return [int(entry) for entry in value]

    @field_validator("discord_api_base", "discord_gateway_url")
    @classmethod
    def _check_discord_url(cls, value: str, info: ValidationInfo) -> str:
        schemes = ("http", "https") if info.field_name == "discord_api_base" else ("ws", "wss")
        if not re.match(rf"^({'|'.join(schemes)})://\S+$", value):
            raise ValueError(f"must start with {schemes[0]}:// or {schemes[1]}:// (got {value!r})")
        return value.rstrip("/") if info.field_name == "discord_api_base" else value

    @field_validator("image_default_size")
    @classmethod
    def _check_default_size(cls, value: str) -> str:
        parse_size(value)
        return value.strip().lower()

    @field_validator("llm_model_dir", "image_model_dir")
    @classmethod
    def _existing_dir(cls, value: Path | None) -> Path | None:
        if value is None or str(value) == "":
            return None
        value = value.expanduser()
        if not value.is_dir():
            raise ValueError(f"{value} is not a directory")
        return value

    @field_validator("remote_base_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not re.match(r"^https?://", value):
            raise ValueError(f"must start with http:// or https:// (got {value!r})")
        return value.rstrip("/")

    @field_validator("telegram_api_base", "telegram_webhook_url")
    @classmethod
    def _check_telegram_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"must be an http:// or https:// URL (got {value!r})")
        return value.rstrip("/")

    @field_validator("telegram_token", "telegram_webhook_secret", mode="before")
    @classmethod
    def _empty_secret(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("telegram_token")
    @classmethod
    def _check_telegram_token(cls, value: SecretStr | None) -> SecretStr | None:
        # the message never repeats the value: it is a secret
        if value is not None and not re.match(r"^\d+:[A-Za-z0-9_-]+$", value.get_secret_value().strip()):
            raise ValueError("is not a bot token like 123456789:AAE... (ask @BotFather for it)")
        return None if value is None else SecretStr(value.get_secret_value().strip())

    @field_validator("telegram_webhook_secret")
    @classmethod
    def _check_webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not re.match(r"^[A-Za-z0-9_-]{1,256}$", value.get_secret_value()):
            raise ValueError("must be 1-256 characters of A-Z, a-z, 0-9, _ and -")
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> "Settings":
        if self.image_default_size not in self.image_sizes:
            raise ValueError(
                f"OVBOT_IMAGE_DEFAULT_SIZE {self.image_default_size} must be one of "
                f"OVBOT_IMAGE_SIZES ({', '.join(self.image_sizes)})"
            )
        if not self.image_min_steps <= self.image_default_steps <= self.image_max_steps:
            raise ValueError(
                "OVBOT_IMAGE_DEFAULT_STEPS must lie between OVBOT_IMAGE_MIN_STEPS and "
                "OVBOT_IMAGE_MAX_STEPS"
            )
        if not self.image_min_cfg <= self.image_default_cfg <= self.image_max_cfg:
            raise ValueError(
                "OVBOT_IMAGE_DEFAULT_CFG must lie between OVBOT_IMAGE_MIN_CFG and OVBOT_IMAGE_MAX_CFG"
            )
        if self.http_host not in ("127.0.0.1", "localhost", "::1") and not self.api_keys:
            raise ValueError(
                f"OVBOT_HTTP_HOST={self.http_host} exposes the API beyond this computer: "
                "set OVBOT_API_KEYS (comma-separated keys of 16+ characters)"
            )
        if self.engine == "remote" and not self.remote_base_url:
            raise ValueError("OVBOT_ENGINE=remote needs OVBOT_REMOTE_BASE_URL")
        if not self.telegram_api_base:
            raise ValueError("OVBOT_TELEGRAM_API_BASE must not be empty (default https://api.telegram.org)")
        if self.telegram_mode == "webhook" and not (self.telegram_webhook_url and self.telegram_webhook_secret):
            raise ValueError(
                "OVBOT_TELEGRAM_MODE=webhook needs OVBOT_TELEGRAM_WEBHOOK_URL and OVBOT_TELEGRAM_WEBHOOK_SECRET"
            )
        return self

    @property
    def database_path(self) -> Path:
        return self.db_path or self.data_dir / "ovbot.db"

    def secrets(self) -> list[str]:
        """Every secret value, for log redaction."""
        values = [
            self.hf_token,
            self.remote_api_key,
            *self.api_keys,
            self.telegram_token,
            self.telegram_webhook_secret,
            self.discord_token,
        ]
        return [v.get_secret_value() for v in values if v is not None]

    def image_limits(self) -> ImageLimits:
        return ImageLimits(
            sizes=tuple(parse_size(s) for s in self.image_sizes),
            default_size=parse_size(self.image_default_size),
            default_steps=self.image_default_steps,
            min_steps=self.image_min_steps,
            max_steps=self.image_max_steps,
            default_cfg=self.image_default_cfg,
            min_cfg=self.image_min_cfg,
            max_cfg=self.image_max_cfg,
            max_prompt_chars=self.image_max_prompt_chars,
        )


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment (and ``overrides``), or raise SettingsError
    with one line per invalid value, naming the environment variable to fix. A variable
    that names no setting (a typo such as ``OVBOT_LLM_DEVCE``) would be silently ignored
    by pydantic, so each one is logged as a warning naming the closest setting."""
    env_file = overrides.get("_env_file", Settings.model_config.get("env_file"))
    for line in unknown_settings(os.environ, env_file):
        log.warning("%s", line)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(format_validation_error(exc)) from None


def unknown_settings(environ: Mapping[str, str], env_file: Any = None) -> list[str]:
    """One line per ``OVBOT_*`` name in ``environ`` or in ``env_file`` (a ``.env`` path,
    or several) that is not a setting, with the closest setting's name when one is near."""
    known = sorted(ENV_PREFIX + name.upper() for name in Settings.model_fields)
    found: list[tuple[str, str]] = [(name, "environment") for name in environ]
    files = env_file if isinstance(env_file, (list, tuple)) else [env_file]
    for path in files:
        if path is not None and Path(path).is_file():
            found += [(name, str(path)) for name in dotenv_values(path)]
    lines: list[str] = []
    for name, where in found:
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in known or upper in NOT_SETTINGS:
            continue
        # compared without the prefix every name shares, or anything would look close
        close = difflib.get_close_matches(
            upper.removeprefix(ENV_PREFIX), [k.removeprefix(ENV_PREFIX) for k in known], n=1, cutoff=0.7
        )
        hint = (
            f"; did you mean {ENV_PREFIX}{close[0]}?" if close else "; .env.example lists every setting"
        )
        lines.append(f"{name} ({where}) is not an ovbot setting and is ignored{hint}")
    return lines


def format_validation_error(exc: ValidationError) -> str:
    lines = ["Invalid settings:"]
    for error in exc.errors(include_url=False, include_input=False):
        location = [str(part) for part in error.get("loc", ()) if part != "__root__"]
        message = error.get("msg", "invalid value").removeprefix("Value error, ")
        if location:
            name = ENV_PREFIX + location[0].upper()
            lines.append(f"  {name}: {message}")
        else:
            lines.append(f"  {message}")
    return "\n".join(lines)
