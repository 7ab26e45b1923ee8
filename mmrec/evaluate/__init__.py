"""Evaluation: the one protocol rule, metrics, the full report, baselines and report rendering."""
