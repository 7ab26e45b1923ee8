"""Serving from a run's exported embeddings: recommendations, similar items, text search, nearest-neighbour
indexes, diversity re-ranking, explanations, and new users and items without retraining."""
