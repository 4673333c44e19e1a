"""Fake platform servers on 127.0.0.1 that speak the real wire protocols.

Each module is reusable by any test: start the server, point the real client
library at it, inspect what it recorded.
"""
