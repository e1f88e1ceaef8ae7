"""The durable, fair job queue (in-process; a distributed queue can replace it)."""
