"""lifecycle: warehouse-native marketing automation on Apache Airflow.

The engine is plain Python + SQL that takes a SQLAlchemy engine; only
`dag_factory` imports Airflow, so every piece can be tested on its own.
"""
