"""The throwaway PostgreSQL cluster the ledger tests use; it lives in the package (daemon/bench/postgres.py)
so that `lipsyncd bench --only cluster` can start one too."""

from daemon.bench.postgres import START_TIMEOUT_S, Cluster, start, unavailable

__all__ = ["START_TIMEOUT_S", "Cluster", "start", "unavailable"]
