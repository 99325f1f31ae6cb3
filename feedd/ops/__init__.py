"""Running as a daemon: signals, systemd notification, logs."""
