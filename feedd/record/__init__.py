"""The recorder and the replay of its files (docs/recording.md)."""
