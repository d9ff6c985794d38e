"""Configuration: models.toml and the task TOMLs read into frozen, validated pydantic models; where edgeeval finds
its files; and the model files themselves (the GGUF reader, the cached sha256)."""
