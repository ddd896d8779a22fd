"""NNEF file formats: ``.dat`` tensors, graph.nnef text, archives."""
