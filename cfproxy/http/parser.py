"""Strict incremental HTTP/1.1 head parser and body framing (sans I/O).

(Stub: the interface. Implementation pending.)
"""
