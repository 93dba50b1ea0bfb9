"""Ray glue: the only package that imports ray. It moves data and calls the library; logic lives elsewhere."""
