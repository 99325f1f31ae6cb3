"""The wire: WebSocket frames, TLS records, the upgrade, and the transport seam."""
