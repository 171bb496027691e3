"""Offline training and evaluation: nets, LightningModules, sklearn fits, artifact registry."""
