"""The package's version, in a module of its own: what records it (journals, ``--version``)
imports it from here, not from the package that imports them."""

__version__ = "0.1.0"
