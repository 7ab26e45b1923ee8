"""Catalogue to dataset folder (`mmrec shard`): validate every row and medium, split the interactions,
write the shards, the split files and the manifest, and quarantine what cannot be used."""
