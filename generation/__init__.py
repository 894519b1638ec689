"""Grounded answer generation (issue 4): a local generator writes answers citing retrieved chunks as [n]."""
