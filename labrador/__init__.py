"""labrador: durable orchestration for a Kubernetes learning platform."""

__version__ = "0.1.0"
