"""Offline data preparation: the phantom MIMIC-CXR generator and the MIMIC-CXR -> WebDataset sharder."""
