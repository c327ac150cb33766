"""autosqueeze: search the joint space of BERT compression methods on your hardware."""
__version__ = "0.1.0"


def load(path):
    """Load a model saved by ``autosqueeze apply`` (see :mod:`autosqueeze.deploy`)."""
    from .deploy import load_compressed

    return load_compressed(path)
