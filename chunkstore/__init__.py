"""Chunking, ids, keys, encryption and the on-disk chunk store. Synchronous and pure."""
