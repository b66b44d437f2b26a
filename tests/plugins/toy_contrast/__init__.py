"""A toy ninth model, outside sidecar/ and models/: proves a model is a plug-in (docs/adding-a-model.md)."""
