"""A method added from outside the package: gradient × input (Δ replaced by the activation itself).
With its registry entry it runs through attribute, discover (with edges), curves and compare."""

from featurecircuits.attribution import Attribution, atp


def grad_times_input(model, splice, batch, metric, cfg, progress=False) -> Attribution:
    res = atp(model, splice, batch, metric, cfg, progress)
    for sub in res.submodules:
        for part, g in res.coefficients[sub].items():
            act = res.activations[sub][part]
            res.deltas[sub][part] = -act  # as if patched to zero
            score = (-act * g)
            if not (part == "act" and sub in splice.dictionaries):
                score = score.sum(-1)
            (res.scores if part == "act" else res.error_scores)[sub] = score
    return res
