"""Feedback and training: stored answers, searches and feedback events (`store.py`), training examples from events
and qrels (`examples.py`), and the reranker's train -> gate -> promote loop (trained from BEIR qrels today)."""
