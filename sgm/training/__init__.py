"""Training with PyTorch Lightning: the ``main.py`` command line, callbacks, image grids."""
