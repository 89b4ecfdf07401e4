"""The package version, in a module of its own so that code inside pyrotrain can read it without
importing the package's __init__ (which imports the API, hence the loop)."""

__version__ = "0.1.0"
