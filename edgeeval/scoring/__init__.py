"""Scoring: the current records of a run scored per example, the metrics over them, and the paired statistics."""
