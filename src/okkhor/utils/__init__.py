"""Utilities: atomic files, progress, sizes, devices and optional extras."""
