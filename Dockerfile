# Airflow image for lifecycle: the official Apache Airflow image plus our Python dependencies.
# The tag must match the apache-airflow pin in requirements.txt (tests/test_compose.py checks it)
# and the Python version in pyproject.toml.
FROM apache/airflow:3.3.2-python3.11

# Only the dependency lists go into the image: dags/, plugins/ and include/ are mounted by
# docker-compose.yaml, and connections/secrets come from the environment, never from files here.
# constraints.txt locks every direct and transitive version; repeating
# "apache-airflow==${AIRFLOW_VERSION}" keeps pip from up- or downgrading the image's Airflow.
# (The image already ships the celery and fab providers that docker-compose.yaml relies on.)
COPY --chown=airflow:0 requirements.txt constraints.txt /opt/lifecycle/
RUN pip install --no-cache-dir \
        "apache-airflow==${AIRFLOW_VERSION}" \
        -r /opt/lifecycle/requirements.txt \
        -c /opt/lifecycle/constraints.txt

# plugins/lifecycle/config.py finds include/ relative to this directory.
ENV LIFECYCLE_PROJECT_DIR=/opt/airflow

# The `lifecycle` command (lint, migrate, init, ...) runs the mounted plugins/ packages, as the
# console script does (lifecycle_demo.cli: the engine's commands and the demo's);
# docker-compose's airflow-init runs `lifecycle init`.
USER root
RUN printf '%s\n' '#!/bin/sh' \
        'export PYTHONPATH="/opt/airflow/plugins${PYTHONPATH:+:$PYTHONPATH}"' \
        'exec python -m lifecycle_demo.cli "$@"' \
        > /usr/local/bin/lifecycle \
    && chmod 0755 /usr/local/bin/lifecycle
USER airflow
