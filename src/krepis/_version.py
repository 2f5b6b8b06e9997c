"""The release of this krepis."""

__version__ = "0.1.0"
