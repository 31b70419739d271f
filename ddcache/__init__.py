"""ddcache: build table datasets once into an LMDB cache, stream them into training many times."""

__version__ = "0.1.0"
