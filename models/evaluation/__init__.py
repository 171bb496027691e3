"""Measurements of detectors on labelled data (public benchmarks and scenarios)."""
