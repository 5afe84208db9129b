"""K2's web views and ``/metrics``, served by the Faust worker's web server. Found by autodiscovery."""
