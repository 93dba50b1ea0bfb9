"""Data: BEIR-format readers, training-example schema, weak pairs and hard-negative mining."""
