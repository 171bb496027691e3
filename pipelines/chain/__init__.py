"""Chain I/O: contracts, anvil, block follower, enforcement sender."""
