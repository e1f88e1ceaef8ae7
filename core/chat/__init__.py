"""The chat service: turns user messages into queued jobs and runs them on the engines."""
