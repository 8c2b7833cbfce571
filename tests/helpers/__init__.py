"""Tiny models and data sets built locally, shared by the runner, compression and serving tests."""
