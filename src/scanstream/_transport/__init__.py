"""Connections to Redis: settings, the connection pool and retry policy, vectored sends, the
embedded server. The only code that touches redis-py's internals.

Implementation package: import the public names (``DataStore``, ``Settings``) from
:mod:`scanstream` instead.
"""
