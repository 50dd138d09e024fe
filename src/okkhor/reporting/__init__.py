"""Reporting: the run report and previews."""
