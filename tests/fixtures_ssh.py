"""pytest fixtures: real sshd hosts on loopback (owned by the fleet work)."""
