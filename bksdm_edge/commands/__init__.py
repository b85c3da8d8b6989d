"""Subcommands of ``bksdm-edge``; each module exposes ``register(subparsers)`` (see ``bksdm_edge.cli``)."""
