"""Measurement tools: ``mpsl-compare``, ``mpsl-costs``, ``mpsl-traffic-sweep``,
``mpsl-partition-plot``. A leaf: nothing in the app imports it."""
