"""Tiny command lines of the study CLIs, shared by their folder tests and the
integrity probe (the net-scaling workload is in :mod:`netscale_workloads`)."""

#: nqm-scaling in a few seconds: d = 20, one family, two batch sizes.
NQM_TINY = [
    "nqm-scaling", "--dim", "20", "--batch-sizes", "1,4", "--powers", "0",
    "--targets", "0.05", "--families", "sgd", "--threshold-targets", "0.1",
    "--bcrit-targets", "", "--ramp-budgets", "", "--fixed-momentum", "0",
]  # fmt: skip
#: net-scaling in a few seconds: blobs, a small MLP, SGD, two batch sizes.
NET_TINY = [
    "net-scaling", "--model", "netscale_workloads:small_mlp",
    "--data", "netscale_workloads:blobs", "--target", "0.6", "--optimizers", "sgd",
    "--batch-sizes", "4,8", "--trials", "2", "--max-steps", "40",
    "--eval-every", "5", "--n-boot", "5", "--workers", "1",
]  # fmt: skip
