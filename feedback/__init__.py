"""Learning from users (issues 3 and 5): feedback events become reranker and generator training data."""
