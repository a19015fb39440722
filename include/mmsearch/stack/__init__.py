"""`make up` / `make down` / `make serve`: the local server stack, no Docker.

PostgreSQL (Airflow's metadata, MLflow's tracking store and users) and, with the Celery
executor, Redis; Airflow 3 as separate processes (api-server, scheduler, dag-processor,
triggerer, and N `airflow celery worker`s) from the Airflow environment; an MLflow tracking
server behind MLflow's basic-auth app, and the champion's re-ranking service, from the ML
environment. Every port is on 127.0.0.1.

- settings: ports, executor, secrets, paths, and the environment every process gets;
- components: the table of what runs (command, environment, readiness, stop signal, kept alive);
- processes: start, record, stop by PID, memory and sockets of what was started;
- services: PostgreSQL's cluster and Redis' configuration; keeper: `restart: always`;
- health: each component's state; clients: the running stack's APIs;
- lifecycle: up, down, serve, restart, status.

The re-ranking service `make serve` starts is a package of its own, mmsearch.rerank (ML environment).
"""
