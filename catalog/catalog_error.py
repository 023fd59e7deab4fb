"""The catalog's own error, in a module of its own: the store, the file lock, snapshots and the
records mixins all raise it, and none of them needs another to do so."""


class CatalogError(RuntimeError):
    """The catalog cannot be opened (missing file for a reader, locked by another writer...)."""
