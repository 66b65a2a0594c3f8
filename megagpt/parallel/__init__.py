"""Rank grid, process groups, RNG streams and distributed start-up."""
