"""Phantom MIMIC-CXR: synthetic chest radiographs and reports with exact ground truth.

Rooms: ``cohort`` (ids, patients, splits, dates), ``case`` (what a study shows and says: the finding
catalogue, report phrases and CheXpert labels, in one place), ``report`` (MIMIC-style report text),
``anatomy`` (view geometry and the healthy chest), ``draw`` (findings with masks and boxes),
``dicom_io`` (DICOM encodings and the 8-bit JPG rendering), ``study`` (one study end to end),
``tables`` (CSVs, the CheXpert layout and the annotation file), ``dense_sets`` (SIIM / RSNA / Object-CXR
sets of new chests).
"""
