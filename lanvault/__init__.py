"""The composition layer: the CLI and daemon wiring chunkstore, node and fs together."""
