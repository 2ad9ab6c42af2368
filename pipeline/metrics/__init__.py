"""Request metrics derived from the access logs (the worker exports them on ``/metrics``)."""
