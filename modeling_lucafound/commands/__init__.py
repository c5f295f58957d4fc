"""Subcommands of the `lucafound` console script, one module each (see `modeling_lucafound.cli`)."""
