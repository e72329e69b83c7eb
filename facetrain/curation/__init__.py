"""Cleaning a training set before training (issue 26): exact duplicates, outliers within an identity, identities
that are one person, overlap with evaluation data. ``scripts/clean_dataset.py`` runs it; docs/noisy_data.md
describes the checks and their sources."""
