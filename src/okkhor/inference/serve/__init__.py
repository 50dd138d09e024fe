"""`okkhor serve`: an HTTP API over an ensemble (checkpoints or ONNX files) and a page to write on."""
