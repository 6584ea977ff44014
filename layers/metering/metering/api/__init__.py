"""The HTTP boundary: request/response models and the resolver every handler uses."""
