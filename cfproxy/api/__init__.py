"""The REST API (reference 2): `server.py` speaks HTTP through h11, `handlers.py` decides the answers."""
