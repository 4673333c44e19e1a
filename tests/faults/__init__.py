"""Fault tests: real gateway processes killed with SIGKILL, a poller leader dying, Postgres
restarting under load. Each proves a delivery claim (nothing lost, nothing doubled) by counting
at the fake platforms' side."""
