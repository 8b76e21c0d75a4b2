"""Dependency analysis: channel labels, coupled groups, and the one table of op rules."""
