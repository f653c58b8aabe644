"""Device mesh, logical axis rules and global batches."""
