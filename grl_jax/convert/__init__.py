"""Weight import: PyTorch state dicts -> a variables-only orbax checkpoint (`grl_jax.checkpoint`).

    python -m grl_jax.convert --format=FORMAT --input=PATH --output=DIR \
        --config=configs/mars.py:model=grl [--config.model.dtype=bfloat16 ...] [--siamese=FILE]

Modules, one job each:

* `torch_layout`: tensor layouts, leaf names, the torchvision ResNet key mapping, reading
  `.pth` (torch.load(weights_only=True)) / `.npz` (no pickles), `fill` / `check_unused`.
* `torchvision`: ImageNet ResNet -> the trunk of a fresh GRL / NVAN / STE-NVAN / IAUnet.
* `grl_official`: flysnowtiger/GRL CNN + Siamese checkpoints <-> GRL.
* `nvan_official`: jackie840129/STE-NVAN checkpoints <-> NVAN / STE-NVAN.
* `formats`: the table `FORMATS` of every `--format` name.
* `template`: the target model's variables (shapes or fresh values) via the model registry.
* `converter`: `convert(fmt, config, input, ...)`; `cli`: the command line (`main`, `run`).

Every source key is used or reported as ignored; a missing, mis-shaped or unexpected key is a
`ConversionError` naming it (and the expected shape).
"""
from __future__ import annotations

from grl_jax.convert.cli import main, run
from grl_jax.convert.converter import convert
from grl_jax.convert.formats import FORMATS, Format
from grl_jax.convert.grl_official import (export_state_dict, grl_official_key,
                                          grl_official_variables, infer_grl_official,
                                          split_official)
from grl_jax.convert.torch_layout import (DATA_PARALLEL, check_unused, fill, flatten,
                                          flax_to_torch, leaf_name, load_state_dict,
                                          resnet_torch_key, strip_data_parallel, torch_shape,
                                          torch_to_flax, unflatten)
from grl_jax.convert.torchvision import imagenet_variables
from grl_jax.errors import ConversionError

__all__ = [
    'ConversionError', 'DATA_PARALLEL', 'FORMATS', 'Format', 'check_unused', 'convert',
    'export_state_dict', 'fill', 'flatten', 'flax_to_torch', 'grl_official_key',
    'grl_official_variables', 'imagenet_variables', 'infer_grl_official', 'leaf_name',
    'load_state_dict', 'main', 'resnet_torch_key', 'run', 'split_official',
    'strip_data_parallel', 'torch_shape', 'torch_to_flax', 'unflatten',
]
