"""Checks `make lint` runs on the repository (the import rules between its folders)."""
