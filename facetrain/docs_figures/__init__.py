"""The figures of README.md and docs/: each module makes one kind, ``scripts/make_docs.py`` runs them all."""
