"""Grounded answer generation: a local generator writes answers citing retrieved chunks as [n]; each citation is
verified against its chunk, and the pipeline abstains when the evidence or the support is too weak."""
