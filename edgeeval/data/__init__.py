"""Data: the `Example` every task is made of, and the loaders that read each real file format into examples."""
