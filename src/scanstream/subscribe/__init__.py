"""The consumer API of BLISS's "Subscribing" layer: nodes, walks and their events.

Import the public names from :mod:`scanstream`.
"""
