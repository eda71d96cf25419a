"""The peer daemon: protocol, transport, membership, placement, replication, repair."""
