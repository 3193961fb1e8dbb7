"""Shared plumbing for the three services: settings, Consul registration and discovery,
the Hazelcast client and logging setup."""
