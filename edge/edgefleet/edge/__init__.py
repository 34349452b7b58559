"""The device agent: sources, runtimes, outbox, uplink and model delivery."""
