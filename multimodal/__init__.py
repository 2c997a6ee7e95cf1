"""Shared core: cohort tables, tabular preprocessing, MRI pipeline, encoders, synthetic cohorts."""
