"""The project's development tools, kept out of the runtime package: the Lambda layer ships
layers/metering/metering only, and this package (tools/metering_dev) is installed in the project's
virtualenv alone (pyproject.toml).

- `devserver`: `metering dev` / `make dev`, the HTTP API on 127.0.0.1:3000 (as `sam local
  start-api` would serve it, without containers);
- `invoke`: `metering invoke` / `make invoke`, one handler on one event file (`sam local invoke`);
- `openapi`: `metering openapi` / `make openapi`, the OpenAPI document built from the handlers;
- `events`: the one builder of API Gateway (HTTP API 2.0) and SQS events, for the dev server, the
  tests and the benchmark;
- `template`, `context`, `embedded`: template.yaml's functions and routes, a fake Lambda context,
  PostgreSQL and Redis (the environment's, the machine's, or embedded ones).

`python -m metering` dispatches `dev`, `invoke` and `openapi` here lazily (metering/cli.py).
"""
