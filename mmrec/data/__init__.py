"""Catalogue validation, WebDataset shards, interaction splits and shard readers."""
