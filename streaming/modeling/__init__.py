"""Models for serving and training: metadata, the registry, loading, and the Beam handler."""
