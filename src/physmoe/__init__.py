"""physmoe: space-group classification from powder X-ray diffraction patterns."""

__version__ = "0.1.0"
