"""Plain-text replies every chat platform sends the same way: a core error, the usage
report, the queue, an admin's limits view. Platforms differ in markup and buttons, not
in what these say, so the wording lives here once (the core's ``user_message`` is the
substance; this only frames it). Plain text: callers send it without a parse mode."""

from __future__ import annotations

from ovbot.core.durations import duration_text, window_text
from ovbot.core.errors import BadParameter, InvalidInput, OvbotError, QueueFull, RateLimited
from ovbot.core.turns import JobStatus, LimitUsage, UsageReport


def error_text(exc: OvbotError) -> str:
    """The one reply for a refusal or failure the core raised."""
    if isinstance(exc, (RateLimited, QueueFull)):
        return f"⏳ {exc.user_message}"
    if isinstance(exc, (BadParameter, InvalidInput)):
        return f"⚠️ {exc.user_message}"
    return f"⛔ {exc.user_message}" if exc.kind == "forbidden" else f"⚠️ {exc.user_message}"


def _duration(seconds: float | None) -> str:
    return "-" if seconds is None else duration_text(seconds)


def _limit_line(name: str, usage: LimitUsage) -> str:
    if usage.limit is None:
        return f"{name}: {usage.used} used, no limit"
    if usage.limit == 0:
        return f"{name}: turned off"
    window = window_text(usage.window_s)
    line = f"{name}: {usage.used} of {usage.limit} per {window} used"
    if usage.reset_in_s is not None and usage.remaining == 0:
        line += f", next in {_duration(usage.reset_in_s)}"
    return line + (" (set by an admin)" if usage.overridden else "")


def usage_text(report: UsageReport) -> str:
    lines = [f"Usage of {report.user_key}" + (" (admin)" if report.admin else "")]
    lines.append(_limit_line("Chat messages", report.chat))
    lines.append(_limit_line("Pictures", report.image))
    if report.default_chat_per_window is not None:
        lines.append(
            f"Defaults: {report.default_chat_per_window} messages per {window_text(report.chat.window_s)}, "
            f"{report.default_images_per_day} pictures per day"
        )
    return "\n".join(lines)


def queue_text(jobs: list[JobStatus]) -> str:
    if not jobs:
        return "You have nothing waiting or running."
    lines = []
    for job in jobs:
        what = "Chat" if job.kind.value == "chat" else "Picture"
        if job.position == 0:
            progress = ""
            if job.progress_step is not None:
                progress = f", step {job.progress_step}/{job.progress_total}"
            lines.append(f"{what} {job.job_id[:8]}: running{progress}")
        else:
            eta = f", starts in ~{_duration(job.eta_s)}" if job.eta_s is not None else ""
            lines.append(f"{what} {job.job_id[:8]}: #{job.position} in line{eta}")
    return "\n".join(lines)


def unknown_command_text(command: str, help_command: str = "/help") -> str:
    """A command the bot does not have (shown as typed, shortened)."""
    shown = command if len(command) <= 40 else command[:39] + "…"
    return f"❓ Unknown command {shown}. {help_command} lists what I can do."
