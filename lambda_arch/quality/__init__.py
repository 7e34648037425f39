"""Data quality: the rules of the lake and the views as plain functions, and alert delivery."""
