"""The Redis data model: key names, entry formats and codecs, metadata rules, server scripts.

Implementation package: import the public names from :mod:`scanstream` instead. Everything
that knows how a scan looks in Redis lives here. The modules hold pure functions, except
:mod:`.scripts`, which runs the server-side scripts through a client it is handed: this
package opens no connection and knows no connection settings.
"""
