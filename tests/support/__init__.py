"""Helpers shared by tests and benchmarks: real servers started and stopped cleanly."""
