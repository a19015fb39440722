"""The re-ranking service: the champion behind FastAPI, in the ML environment (`make serve`,
`python -m mmsearch.rerank`). `service` holds the model, the catalogue and the ranking; `app` the
HTTP side. The stack (mmsearch.stack, Airflow environment) starts it as a process of its own."""

RERANK_TOKEN_VARIABLE = "MMSEARCH_RERANK_TOKEN"  # where the service reads its bearer token
