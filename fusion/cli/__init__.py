"""Command-line entry points of the fusion package (thin click layers over the library)."""
