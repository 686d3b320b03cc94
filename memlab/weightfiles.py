"""Small networks' weights from a folder someone else may have made (a world's alignment classifier, hidden-object
classifier and NeMo statistics, a memlab-copy folder): safetensors alone, each problem one ``MemlabError`` naming
the file. The network a config describes is built on PyTorch's meta device first, which allocates nothing, and
its parameters' names and shapes must be the file's: a config from elsewhere asking for a network of billions of
weights is refused before it is built, and a file of other tensors names its first difference."""
from __future__ import annotations

from pathlib import Path

from .errors import MemlabError, one_line


def read_tensors(path: str | Path) -> dict:
    """A safetensors file's tensors (on the CPU), or one error naming the file (a damaged or foreign file
    raises safetensors' own ``SafetensorError``)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as e:
        raise MemlabError(f"{path} is not a readable safetensors file ({one_line(e)})") from None


def tensor_shapes(path: str | Path) -> dict[str, tuple]:
    """Each tensor's shape from a safetensors file's header (the tensors are not read)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise MemlabError(f"{path} is not a readable safetensors file ({one_line(e)})") from None


def load_module(build, path: str | Path, config: str | Path):
    """``build()`` (a torch module from ``config``'s values) with the weights of ``path``: built on the meta
    device first and compared with the file's header, then built and loaded."""
    import torch

    try:
        with torch.device("meta"):
            shapes = {k: tuple(v.shape) for k, v in build().state_dict().items()}
    except (TypeError, ValueError, RuntimeError, OverflowError) as e:
        raise MemlabError(f"{config} does not describe a network memlab builds ({one_line(e)})") from None
    stored = tensor_shapes(path)
    if shapes != stored:
        k = next(k for k in sorted(set(shapes) | set(stored)) if shapes.get(k) != stored.get(k))
        raise MemlabError(f"{path} does not fit {config}: {k} is {stored.get(k, 'missing')} in the file, "
                          f"{shapes.get(k, 'not a parameter')} in the network")
    net = build()
    net.load_state_dict(read_tensors(path))
    return net
