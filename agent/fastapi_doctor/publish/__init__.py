"""Publish: what the agent shows and exports, read from the findings store and the metrics; never
imports a signal (pyproject.toml's import-linter contracts)."""
