"""The FUSE mount and the versions/ view."""
