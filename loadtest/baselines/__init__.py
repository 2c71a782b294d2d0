"""Reference servers for the benchmark: the HTTP floor and the naive torch server.

Both listen on loopback only, expose ``/health/live``, ``/health/ready``, ``/model`` and ``/metrics``
like the real server, and accept the same request schema, so the same locust traffic and checks apply.
"""
