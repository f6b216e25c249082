"""Grids of runs (methods × k × seeds, resumable) and the reports read off finished runs:
tables, plots, curves, breakdowns, paired comparisons, learning-rate selection."""
