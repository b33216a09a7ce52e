"""The local sandbox of `make demo`: real sshd hosts, a real InfluxDB, a small
shop with traffic, and pushguard pushing a story of changes to it (see run.py)."""
