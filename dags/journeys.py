"""Airflow DAGs for every journey in include/sql/segments/: add a segment file, get a DAG.

Nothing else belongs in this file: the engine lives in plugins/lifecycle/.
"""

from lifecycle.dag_factory import build_dags

globals().update(build_dags())
