"""Serving models: dyff's BentoML service, starting `bentoml serve`, and a client for it."""
