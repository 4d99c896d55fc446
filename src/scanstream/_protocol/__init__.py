"""The Redis data model: key names, entry formats and codecs, metadata rules, server scripts.

Implementation package: import the public names from :mod:`scanstream` instead. Nothing here
talks to Redis; everything that knows how a scan looks in Redis lives here.
"""
