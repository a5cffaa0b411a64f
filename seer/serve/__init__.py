"""Serving faces over the engine: the OpenAI-compatible API server and the web UI."""
