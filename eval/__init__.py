"""Evaluation: retrieval metrics on BEIR-format data sets (later: answer quality and RAGAS)."""
