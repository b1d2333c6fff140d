"""Harnesses around the node: local swarms of real processes (and, later, the simulator)."""
