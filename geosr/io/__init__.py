"""Input/output seams: storage environment (local, s3://) and raster sources."""
