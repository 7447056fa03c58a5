"""Offline partitioner: ONNX model -> weighted op graph -> METIS -> acyclic repair -> part models + plan."""
