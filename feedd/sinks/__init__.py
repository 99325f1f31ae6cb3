"""Consumers the hub fans records out to (the Unix-socket publisher; callbacks live in the hub)."""
