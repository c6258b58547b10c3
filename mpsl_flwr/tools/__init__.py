"""Measurement tools: ``mpsl-compare``, ``mpsl-costs``, ``mpsl-traffic-sweep``,
``mpsl-partition-plot``, the label-privacy tools, and ``mpsl-pretrain`` (the encoder
pre-training behind run-config ``pretrained``). A leaf: nothing in the app imports it."""
