"""The distribution side: embedded storage, uploads, presigned links, notifications."""
