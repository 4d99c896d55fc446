"""The producer API: sessions, scans, containers and the data publishers of their nodes.

Import the public names from :mod:`scanstream`.
"""
