"""Benchmarks of conductor against what a user would run instead.

``python -m bench`` (``make bench``) starts each system under test on its own private
redis-server and supervisord, measures it with the same scripts, and writes
``docs/BENCHMARKS.md`` and ``docs/bench.png`` from that one run, so every ratio compares numbers
taken on the same machine minutes apart.
"""
