"""The ``tongban`` command line (the console script ``tongban = tongban.ops.cli:main``).

One module per command group, each registering its commands with ``add_parsers(subparsers)``:
``dev``, ``processes`` (gateway, connector), ``exchange`` (query, submit, case), ``dlq``, ``certs``,
``maintenance``, ``trust`` (registry, keys), ``nats_config``, ``trace``, ``ledger`` and ``report``;
``common`` holds what they share, ``app`` the parser and :func:`main`.
"""

from tongban.ops.cli.app import build_parser, main

__all__ = ["build_parser", "main"]
