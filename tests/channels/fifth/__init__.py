"""A test-only channel package: the registry reads channel modules from here as it reads
lifecycle/channels/catalog/ (tests/channels/test_fifth_channel.py)."""
