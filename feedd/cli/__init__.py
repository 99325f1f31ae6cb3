"""The ``feedd`` command line."""
