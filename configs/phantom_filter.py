"""The dense-tissue filter table (README "The dense-tissue filter"): the CPU demo (phantom_tiny.py,
unchanged, so a finished demo run can be continued) plus the supervised ``counterfactual`` stage,
a UNet trained on the phantoms' (image → fat-only counterfactual) latent pairs.

    python train.py --config configs/phantom_filter.py --workdir runs/filter
    python evaluate.py --workdir runs/filter --sections dense_tissue_filters
"""

import importlib.util
import pathlib


def _demo_config():
    path = pathlib.Path(__file__).with_name("phantom_tiny.py")
    spec = importlib.util.spec_from_file_location("phantom_tiny", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config():
    cfg = _demo_config()
    cfg.stages = "autoencoder,diffusion,counterfactual"
    # The diffusion stage's recipe; the source latent makes the task easier than generation.
    cfg.counterfactual.update({key: cfg.diffusion[key] for key in cfg.diffusion})
    cfg.counterfactual.update(dict(steps=2000))
    return cfg
