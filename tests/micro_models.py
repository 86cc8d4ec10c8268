"""Micro models of the three families, small enough to train in seconds on a CPU."""

MICRO = {
    "vit": {"name": "vit-micro", "family": "vit", "depth": 2, "width": 64, "heads": 4, "mlp_dim": 128,
            "patch_size": 8},
    "resnet": {"name": "bit-micro", "family": "resnet", "blocks": [1, 1, 1, 1], "width_factor": 0.25,
               "groups": 8},
    "hybrid": {"name": "hybrid-micro", "family": "hybrid", "blocks": [1, 1], "width_factor": 0.25, "groups": 8,
               "depth": 2, "width": 64, "heads": 4, "mlp_dim": 128},
}
