"""The control plane over HTTP: a small ASGI app (:mod:`.app`), the endpoints (:mod:`.api`), the
hypercorn glue that serves them in the daemon's nursery (:mod:`.server`), and the client the
command line uses (:mod:`.client`).

Importing this package imports none of them: ``feedd tail`` never pays for hypercorn.
"""
