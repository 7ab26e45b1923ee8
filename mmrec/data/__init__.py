"""Reading a dataset folder (DATA): its schema, the one opener of its files (local or remote), the split
arrays, the run vocabulary, the shard readers and batches, media decoding and the feature-cache format."""
