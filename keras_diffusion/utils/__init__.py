"""Small utilities (image conversion and grids)."""
