"""A template grappa plugin package."""

__version__ = "0.1.0"
