"""Load testing and the serving benchmark.

- ``loadtest.traffic``: realistic requests drawn from a dataset's test histories, and the checks applied
  to every response (used by the locustfile and the bench).
- ``loadtest.locustfile``: the locust user (``FastHttpUser``).
- ``loadtest.run``: a bounded, loopback-only headless locust run with a one-screen summary; soak mode.
- ``loadtest.report``: locust CSV parsing, Prometheus parsing, resource sampling, summaries.
- ``loadtest.bench``: the serving benchmark (HTTP floor vs naive torch server vs ours).
- ``loadtest.baselines``: the two reference servers the bench starts.

This package talks to the server over HTTP only; only the bench starts servers (and stops them).
"""
