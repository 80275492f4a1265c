"""One module per channel, each defining `CHANNEL = Channel(...)` (lifecycle.channels.base):
the registry (lifecycle.channels) reads every module here. Descriptions only: the provider
code they name is imported inside the send tasks, never while Airflow parses the DAGs."""
