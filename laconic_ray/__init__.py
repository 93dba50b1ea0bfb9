"""laconic_ray: LACONIC / CSPLADE learned sparse retrieval as distributed batch jobs on Ray.

Stages: train (Ray Train) -> encode (Ray Data) -> index (CPU actors) -> serve (scatter-gather) -> eval.
Everything outside ``laconic_ray.distributed`` is plain PyTorch / NumPy / Arrow and never imports ray.
"""

__version__ = "0.1.0"
