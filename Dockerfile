# The image every Airflow service and the MLflow server of docker-compose.yaml run.
# Airflow 3.3.2 as released, plus mmsearch's two environments:
#   - the Airflow side (DVC for pull_data) in the image's own Python, with Airflow pinned so
#     pip cannot move it;
#   - the ML side (TensorFlow, TensorFlow Transform, Beam, MLflow) from the same lock file as
#     `make` uses, in a virtualenv at a fixed path that the DAG's external-python tasks run
#     (MMSEARCH_ML_PYTHON).
# The project itself (dags/, include/, data/, .dvc/) is bind-mounted at /opt/mmsearch by the
# compose file, so the code the containers run is the checkout's.
FROM apache/airflow:3.3.2-python3.11

ENV MMSEARCH_ML_PYTHON=/opt/ml-venv/bin/python \
    MMSEARCH_HOME=/opt/mmsearch-home \
    PYTHONPATH=/opt/mmsearch/include

USER root
RUN mkdir -p /opt/ml-venv /opt/mmsearch /opt/mmsearch-home \
 && chown airflow:root /opt/ml-venv /opt/mmsearch /opt/mmsearch-home
USER airflow

COPY --chown=airflow:root requirements-ml.txt /tmp/requirements-ml.txt
RUN python -m venv /opt/ml-venv \
 && /opt/ml-venv/bin/pip install --no-cache-dir -r /tmp/requirements-ml.txt

RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" dvc==3.67.1 tenacity==9.2.1 psutil==7.2.2
