"""pytest fixtures: a real influxd on loopback (owned by the guard work)."""
