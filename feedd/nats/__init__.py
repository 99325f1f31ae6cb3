"""A small NATS client of feedd's own, on trio: enough for JetStream publishing and replay.

``protocol`` is the sans-IO part (bytes in, events out; commands to bytes), ``client`` drives it
over a trio stream, ``jetstream`` speaks the JetStream API (``$JS.API.*``) through it. Imported
only when the configuration has a ``[nats]`` table, or by ``feedd tail --nats``.
"""
