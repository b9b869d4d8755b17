"""Small real models and data for the README, the command line, tests and bug reports.

``surge.demos.boring``: a tiny linear model on random data, for tests.
``surge.demos.digits``: a convolutional classifier on scikit-learn's handwritten digits (the main demo).
``surge.demos.regression``: linear regression on generated data with known weights (the tutorials' first model).
``surge.demos.gpt``: a small character-level GPT trained on the Python standard library's own source.
``surge.demos.mnist``: MNIST-shaped data available offline, for examples written against torchvision's MNIST.
"""
