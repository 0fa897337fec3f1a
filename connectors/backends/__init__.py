"""Declarative back ends: HTTP services and SQL databases a connector calls from configuration alone."""
