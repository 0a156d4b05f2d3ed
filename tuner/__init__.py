"""tuner: fetch sets of URLs as fast as the far side and your own machine allow, and no faster."""

__version__ = "0.1.0"
