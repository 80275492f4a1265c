"""Local servers that speak real providers' APIs, for the demo and the tests."""
