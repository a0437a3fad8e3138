"""The SBS search engine: model conversion, the cost term, the training loop and configuration I/O."""
