"""mnistlab: develop, train, fine-tune and deploy neural networks on MNIST-style data."""

__version__ = "0.1.0"
