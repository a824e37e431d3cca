"""The render side: decode, audio features, faces, model, blend, encode, and the pipeline tying them."""
