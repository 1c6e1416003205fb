"""The REST API (reference 2): `server.py` speaks HTTP (cfproxy's strict parser), `handlers.py` decides the answers."""
