"""The feed: one venue's connections, from the exchange adapter's frames to validated records."""
