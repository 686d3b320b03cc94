"""index_builder: builds a world's training-set index (``python -m index_builder --help``)."""
