"""edgeeval: offline, paired evaluation of GGUF models on clinical tasks."""

__version__ = "0.1.0"
