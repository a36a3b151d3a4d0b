"""Adapters that make third-party flow-matching policies speak :class:`FlowPolicy`.

Each adapter imports its framework lazily, so importing this package costs nothing.
"""
