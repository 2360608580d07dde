"""Data stage kinds on Ray Data."""
