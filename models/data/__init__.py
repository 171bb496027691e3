"""Synthetic labelled sequences (tx and telemetry), their vectorisation and DataModules."""
