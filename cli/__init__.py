"""Thin argument parsing for the `datakit` and `trainer` commands; no logic lives here."""
