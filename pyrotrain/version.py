"""pyrotrain's version: a module of its own, so that what records it (checkpoints, summaries)
need not import the package, which imports the loop."""

__version__ = "0.1.0"
