"""Text data: corpora (D_pt, local files, hub datasets) and chat data."""
