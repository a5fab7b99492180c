"""The package version (one place; packaging and ``saig --version`` read it)."""
__version__ = "0.1.0"
