"""What people read about a journey in Airflow: its DAG's docs (`dag_docs`), the run note and the
asset event its `summarize` task leaves (`run_note`), and the Journeys page (`app`, `data`, `page`,
`charts`), a FastAPI app the Airflow plugin in plugins/lifecycle_plugin.py mounts in the API server.

This package imports nothing heavy at import time: dag_docs and run_note are used while Airflow
parses the DAGs and inside tasks; only the page's modules import FastAPI and the warehouse."""

URL_PREFIX = "/journeys"  # where the Airflow API server mounts the Journeys page
