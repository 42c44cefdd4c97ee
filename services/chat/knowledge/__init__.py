"""The knowledge base (RAG): the site's documents ingested (ingest.py, cli.py), retrieved for every chat message
(consult.py, the chat step; retrieval.py), with an in-process vector index kept current (index.py)."""
