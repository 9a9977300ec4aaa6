"""Learning agents: one file each, readable top to bottom."""
