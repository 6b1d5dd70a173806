"""Using a trained model: export (safetensors bundle, ONNX), gallery indexes and search, embeddings
written to files.
"""
