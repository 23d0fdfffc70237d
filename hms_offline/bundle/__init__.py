"""What build_bundle.py runs, one module per concern; they import only the standard library."""
