"""The fan-out: the hub and its sinks, each with its own bounded buffer."""
