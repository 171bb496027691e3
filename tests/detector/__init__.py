"""Tests of the pure detection core."""
