"""Console scripts. Each command is a thin layer over a library function."""
