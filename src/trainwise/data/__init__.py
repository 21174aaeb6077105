"""Data sources, validation, manifests, decoded caches, transforms and loaders."""
