"""Docker-free local tooling: a fake Lambda context, a template.yaml reader, embedded PostgreSQL/Redis,
the `metering dev` HTTP server (as `sam local start-api` would serve, without containers) and
`metering invoke` (as `sam local invoke` would run one handler on one event)."""
