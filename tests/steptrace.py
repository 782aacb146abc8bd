"""Step traces: what a run computes in its first few training steps (losses, logits, every gradient, the
update, the running statistics, eval logits), and the comparison of two traces within float32 rounding.
Two paths that compute the same formulas in other kernels (the fast and the plain path, a packed seed and
its solo run) must agree step by step; whole runs cannot be compared that way, as training amplifies
last-bit differences chaotically."""

from __future__ import annotations

import torch

from normexp import data, norm, steps, trainer

# Two paths compute the same float32 formulas in other orders (oneDNN's channels-last kernels, batch
# norm's matrix-vector backward, the fused SGD update), so they may differ by rounding only. A sum of n terms
# rounded in another order moves by about sqrt(n) eps relative; the longest sums here (the first layer's
# N*24*24 positions, 23,040 at batch size 40) give about 150 eps, and a chain of ten layers over three steps a
# few of those: hence 1024 eps (1.2e-4) normwise per tensor, where the differences tests/test_perf.py plants
# (another momentum or eps) are 1e-3 or more. Whole runs are not compared across paths: training amplifies
# last-bit differences chaotically.
EPS32 = torch.finfo(torch.float32).eps
TOL = 1024 * EPS32
STEPS = 3


def layer_values(model: torch.nn.Module, of) -> dict[str, torch.Tensor]:
    """``of(parameter)`` for each layer's parameters as one float64 vector: a value that is zero up to
    rounding (the gradient of a conv bias that a batch norm cancels) is compared at its layer's scale."""
    layers = {}
    for name, module in model.named_modules():
        params = list(module.parameters(recurse=False))
        if params:
            layers[name] = torch.cat([of(p).detach().double().flatten() for p in params])
    return layers


def statistics(model: torch.nn.Module) -> dict[str, tuple[torch.Tensor, float]]:
    """Each running statistic with the scale it is rounded at: a mean at its layer's spread (the mean of a
    centred input is zero up to rounding), a variance or std at its own size."""
    found = {}
    for name, module in model.named_modules():
        buffers = dict(module.named_buffers(recurse=False))
        spread = buffers.get("running_std")
        if "running_var" in buffers:
            spread = buffers["running_var"].sqrt()
        for key, value in buffers.items():
            if value.is_floating_point():
                scale = spread.double().norm() if key == "running_mean" else value.double().norm()
                found[f"{name}.{key}"] = (value.detach().double(), float(scale))
    return found


def trace(cfg, plant=None) -> dict:
    """The fast or plain path (per ``cfg``) through STEPS training steps on the first batches of epoch 1:
    the logits and loss of each step, every gradient, the update, the running statistics, eval logits."""
    setup = trainer.set_up(cfg, jobs=1)
    if plant is not None:
        plant(setup)
    if cfg.norm.name == "brn":
        norm.set_renorm_limits(setup.model, 1.5, 0.5)  # r and d clipped, not the identity
    model, fmt = setup.model, setup.cpu.memory_format
    before = layer_values(model, lambda p: p)
    found = {"logits": [], "loss": [], "grad": []}
    model.train()
    batches = data.epoch_order(len(setup.train_set), cfg.batch_size, cfg.train.seed, 0, setup.device)
    for idx in batches[:STEPS]:
        log = steps.EpochLog()
        steps.train_steps(model, setup.optimizer, setup.train_set, [idx], log, fmt)
        (loss, logits, _), = log.pending
        found["loss"].append(loss.double())
        found["logits"].append(logits.double())
        found["grad"].append(layer_values(model, lambda p: p.grad))
    after = layer_values(model, lambda p: p)
    found["update"] = {k: (after[k] - before[k], float(before[k].norm())) for k in after}
    found["stats"] = statistics(model)
    model.eval()
    with torch.no_grad():
        everything = torch.arange(len(setup.test_set), device=setup.device)
        found["eval"] = model(setup.test_set.batch(everything, fmt)[0]).double()
    return found


def differences(fast: dict, plain: dict, eps: float = EPS32) -> list[str]:
    """Every tensor of the two traces that differs by more than 1024 ``eps`` (TOL, in float32) relative to its
    scale, one line each."""
    tol = 1024 * eps
    pairs = [(f"step {i + 1} {what}", fast[what][i], plain[what][i], None)
             for what in ("loss", "logits") for i in range(STEPS)]
    pairs += [(f"step {i + 1} grad {k}", g, plain["grad"][i][k], None)
              for i, grads in enumerate(fast["grad"]) for k, g in grads.items()]
    # an update is a difference of two rounded parameters: at least one ulp of the parameter is noise
    pairs += [(f"update {k}", u, plain["update"][k][0], tol * plain["update"][k][0].norm() + 4 * eps * p)
              for k, (u, p) in fast["update"].items()]
    pairs += [(f"statistic {k}", v, plain["stats"][k][0], tol * scale)
              for k, (v, scale) in fast["stats"].items()]
    pairs += [("eval logits", fast["eval"], plain["eval"], None)]
    found = []
    for what, a, b, bound in pairs:
        bound = tol * float(b.norm()) if bound is None else float(bound)
        error = float((a - b).norm())
        if not error <= bound:
            found.append(f"{what}: differs by {error:.3g}, allowed {bound:.3g}")
    return found


