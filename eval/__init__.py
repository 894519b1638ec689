"""Evaluation: retrieval metrics on BEIR-format data sets (ranx) and answer metrics on ragas-style question rows."""
