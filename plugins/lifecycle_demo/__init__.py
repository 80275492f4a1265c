"""The demo around the engine: a seeded shop with planted cases, local servers that speak the
providers' APIs, and the `lifecycle demo` / `lifecycle env` commands. The engine (`lifecycle`)
never imports it, so Airflow workers do not load it (tests/test_layout.py checks)."""
