"""The cloud aggregator: ingest, stores, fleet state, model registry, rollout and HTTP API."""
