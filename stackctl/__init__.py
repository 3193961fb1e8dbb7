"""The operator tooling behind ./scripts/ (`python -m stackctl`): the Hazelcast member launcher, the stack's
status and orphans, draining an instance, the stack's PostgreSQL and its migrations, and `./scripts/trace`.
No service imports it."""
