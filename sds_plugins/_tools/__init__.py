"""Tooling around the runtime: the command line, the demo, bulk prewarming."""
