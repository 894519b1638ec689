"""Ingestion and first-stage retrieval: readers, chunking, embeddings, FAISS + BM25 indexes and fusion."""
