"""Crash, outage and leak checks: the harness modules and the tests that drive them."""
