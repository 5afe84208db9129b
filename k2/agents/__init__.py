"""K2's Faust agents: thin loops over :mod:`k2.ingest` and :mod:`k2.sink`. Found by autodiscovery."""
