"""Reading and writing files: images, arrays, sinograms, DICOM, the HU window, atomic writes,
and ``InputError`` for files a user can fix."""
