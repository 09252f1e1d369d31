"""mace-torch ``.model`` (whole-module pickle) -> jaxuft MACE config, params and constants.

Reads the placeholder tree produced by :func:`jaxuft.checkpoints.torch_pickle.read_checkpoint`
(nothing is imported or executed).  Hyperparameters come from the file: irreps,
r_max, Bessel frequencies, cutoff order, avg_num_neighbors, E0s, scale/shift,
the activation normalisation constants, Agnesi and ZBL parameters, heads, and
the symmetric-contraction U tensors.  Every torch parameter must be consumed,
otherwise the conversion fails naming what was left.
"""

from __future__ import annotations

import numpy as np

from ..errors import CheckpointError
from ..models import irreps as I
from ..models.mace import default_head, layer_specs, linear_numel, skip_numel

SUPPORTED_MODELS = {"mace.modules.models.ScaleShiftMACE", "mace.modules.models.MACE"}
SUPPORTED_INTERACTIONS = {
    "RealAgnosticInteractionBlock",
    "RealAgnosticResidualInteractionBlock",
    "RealAgnosticDensityInteractionBlock",
    "RealAgnosticDensityResidualInteractionBlock",
}
ACTIVATION_NAMES = {
    "torch.nn.functional.silu": "silu",
    "torch.tanh": "tanh",
    "torch.nn.functional.tanh": "tanh",
    "torch.sigmoid": "sigmoid",
    "torch.nn.functional.sigmoid": "sigmoid",
}


def looks_like_mace(obj) -> bool:
    return getattr(obj, "qualname", "").startswith("mace.modules.models.")


def irreps_to_str(obj) -> str:
    """e3nn ``Irreps`` placeholder (tuple of ``_MulIr(mul, Irrep(l, p))``) -> ``"128x0e+..."``."""
    if isinstance(obj, str):
        return I.irreps_str(I.parse_irreps(obj))
    parts = []
    for item in obj.items if hasattr(obj, "items") else obj:
        mul, ir = (item.items if hasattr(item, "items") and not isinstance(item, tuple) else item)[:2]
        l, p = tuple(ir.items if hasattr(ir, "items") and not isinstance(ir, tuple) else ir)[:2]
        parts.append(I.MulIr(int(mul), int(l), int(p)))
    return I.irreps_str(parts)


def _activation(act) -> tuple[str, float]:
    """(name, normalisation constant) of an e3nn ``normalize2mom`` (or a bare function)."""
    if getattr(act, "qualname", "").endswith("normalize2mom"):
        f = act.f
        cst = 1.0 if bool(getattr(act, "_is_id", False)) else float(act.cst)
    else:
        f, cst = act, 1.0
    name = ACTIVATION_NAMES.get(getattr(f, "qualname", str(f)))
    if name is None:
        raise CheckpointError(f"unsupported activation {getattr(f, 'qualname', f)!r} in the MACE checkpoint")
    return name, cst


def _scalar(x) -> float:
    return float(np.asarray(x).reshape(()))


class _Taker:
    """Hands out torch parameters by name and remembers which were used."""

    def __init__(self, state: dict):
        self.state = {k: np.asarray(v) for k, v in state.items()}
        self.used: set[str] = set()

    def __call__(self, key: str) -> np.ndarray:
        if key not in self.state:
            raise CheckpointError(f"the MACE checkpoint lacks parameter {key!r}")
        self.used.add(key)
        return self.state[key]

    def leftovers(self, ignore) -> list[str]:
        return [k for k, v in self.state.items() if k not in self.used and not ignore(k, v)]


def _ignorable(key: str, value: np.ndarray) -> bool:
    tail = key.rsplit(".", 1)[-1]
    if tail in ("output_mask",) or tail.endswith("_zeroed"):
        return True
    if value.size == 0:  # empty biases / conv_tp.weight of external-weight TPs
        return True
    return False


def convert_mace(model, head: str | None = None) -> tuple[dict, dict, dict]:
    """Return ``(config, params, constants)`` for a MACE placeholder tree."""
    qn = getattr(model, "qualname", "")
    if qn not in SUPPORTED_MODELS:
        raise CheckpointError(f"unsupported MACE model class {qn!r}; supported: {sorted(SUPPORTED_MODELS)}")
    cueq = model.__dict__.get("cueq_config")
    if cueq is not None and getattr(cueq, "enabled", False):
        raise CheckpointError("this MACE model was saved with cuEquivariance layouts; convert it back with "
                              "mace's `mace_cueq_to_e3nn` first")
    take = _Taker(model.state_dict())
    heads = [str(h) for h in (model.__dict__.get("heads") or ["Default"])]
    if head is not None and head not in heads:
        raise CheckpointError(f"head {head!r} is not in this model; its heads are {heads}")
    atomic_numbers = [int(z) for z in take("atomic_numbers")]
    S = len(atomic_numbers)
    r_max = _scalar(take("r_max"))
    take("num_interactions")

    radial = model.radial_embedding
    if not radial.bessel_fn.qualname.endswith("BesselBasis"):
        raise CheckpointError(f"unsupported radial basis {radial.bessel_fn.qualname}")
    bessel_weights = take("radial_embedding.bessel_fn.bessel_weights")
    take("radial_embedding.bessel_fn.r_max")
    constants = {
        "bessel_weights": bessel_weights,
        "bessel_prefactor": np.asarray(take("radial_embedding.bessel_fn.prefactor")).reshape(()),
    }
    p_cut = int(_scalar(take("radial_embedding.cutoff_fn.p")))
    take("radial_embedding.cutoff_fn.r_max")
    if radial.__dict__.get("apply_cutoff", True) is False:
        raise CheckpointError("MACE models with apply_cutoff=False are not supported yet")
    distance_transform = None
    dt = radial._modules.get("distance_transform") if hasattr(radial, "_modules") else None
    if dt is not None:
        if not dt.qualname.endswith("AgnesiTransform"):
            raise CheckpointError(f"unsupported distance transform {dt.qualname}")
        distance_transform = {
            "type": "Agnesi",
            "q": _scalar(take("radial_embedding.distance_transform.q")),
            "p": _scalar(take("radial_embedding.distance_transform.p")),
            "a": _scalar(take("radial_embedding.distance_transform.a")),
        }
        constants["covalent_radii"] = take("radial_embedding.distance_transform.covalent_radii")
    pair_repulsion = None
    if model.__dict__.get("pair_repulsion"):
        pair_repulsion = {
            "p": int(_scalar(take("pair_repulsion_fn.p"))),
            "a_exp": _scalar(take("pair_repulsion_fn.a_exp")),
            "a_prefactor": _scalar(take("pair_repulsion_fn.a_prefactor")),
            "c": [float(c) for c in take("pair_repulsion_fn.c")],
        }
        for legacy in ("pair_repulsion_fn.r_max", "pair_repulsion_fn.cutoff.p", "pair_repulsion_fn.cutoff.r_max"):
            if legacy in take.state:  # mace <= 0.3.5 stored these; its ZBLBasis.forward never used them
                take(legacy)
        radii = take("pair_repulsion_fn.covalent_radii")
        if "covalent_radii" in constants and not np.allclose(constants["covalent_radii"], radii):
            raise CheckpointError("the Agnesi and ZBL blocks carry different covalent radii")
        constants["covalent_radii"] = radii

    sh_irreps = I.parse_irreps(irreps_to_str(model.spherical_harmonics.irreps_out))
    max_ell = max(m.l for m in sh_irreps)
    if I.irreps_str(sh_irreps) != I.irreps_str(I.spherical_harmonics_irreps(max_ell)):
        raise CheckpointError(f"unsupported spherical-harmonics irreps {I.irreps_str(sh_irreps)}")

    n_layers = len(model.interactions)
    layers, params = [], {}
    params["node_embedding"] = take("node_embedding.linear.weight")
    radial_act = None
    for i in range(n_layers):
        inter, prod = model.interactions[i], model.products[i]
        kind = inter.qualname.rsplit(".", 1)[-1]
        if kind not in SUPPORTED_INTERACTIONS:
            raise CheckpointError(f"unsupported interaction block {kind}; supported: {sorted(SUPPORTED_INTERACTIONS)}")
        fc = inter.conv_tp_weights
        fc_layers = [fc._modules[k] for k in sorted(fc._modules, key=lambda s: int(s.replace("layer", "")))]
        act_name, act_cst = _activation(fc_layers[0].act)
        radial_act = radial_act or act_name
        contraction0 = prod.symmetric_contractions.contractions[0]
        correlation = int(contraction0.correlation)
        readout_cfg = {"type": "linear"}
        ro = model.readouts[i] if i < len(model.readouts) else None
        if len(model.readouts) != n_layers:
            raise CheckpointError("MACE models with use_last_readout_only are not supported yet")
        if ro.qualname.endswith("NonLinearReadoutBlock"):
            ro_act, ro_cst = _activation(ro.non_linearity.acts[0])
            readout_cfg = {
                "type": "nonlinear",
                "mlp_dim": I.irreps_dim(I.parse_irreps(irreps_to_str(ro.linear_1.irreps_out))),
                "act": ro_act,
                "act_cst": ro_cst,
            }
        elif not ro.qualname.endswith("LinearReadoutBlock"):
            raise CheckpointError(f"unsupported readout {ro.qualname}")
        edge_irreps = inter.__dict__.get("edge_irreps")
        lc = {
            "interaction": kind,
            "node_feats_irreps": irreps_to_str(inter.node_feats_irreps),
            "edge_irreps": irreps_to_str(edge_irreps) if edge_irreps is not None else None,
            "target_irreps": irreps_to_str(inter.target_irreps),
            "hidden_irreps_out": irreps_to_str(prod.linear.irreps_out),
            "correlation": correlation,
            "avg_num_neighbors": float(inter.avg_num_neighbors),
            "radial_mlp": [int(l.h_out) for l in fc_layers[:-1]],
            "radial_act_cst": act_cst,
            "readout": readout_cfg,
        }
        layers.append(lc)
        pre = f"interactions.{i}"
        params[f"interactions_{i}.linear_up"] = take(f"{pre}.linear_up.weight")
        for k in range(len(fc_layers)):
            params[f"interactions_{i}.radial_mlp.{k}"] = take(f"{pre}.conv_tp_weights.layer{k}.weight")
        params[f"interactions_{i}.linear"] = take(f"{pre}.linear.weight")
        params[f"interactions_{i}.skip_tp"] = take(f"{pre}.skip_tp.weight")
        if "Density" in kind:
            dfn = inter.density_fn
            if len(dfn._modules) != 1:
                raise CheckpointError(f"interaction {i}: unexpected density network depth {len(dfn._modules)}")
            params[f"interactions_{i}.density_fn"] = take(f"{pre}.density_fn.layer0.weight")
        n_out = len(prod.symmetric_contractions.contractions)
        for j in range(n_out):
            c = f"products.{i}.symmetric_contractions.contractions.{j}"
            for nu in range(1, correlation + 1):
                constants[f"products_{i}.contractions.{j}.U_matrix_{nu}"] = take(f"{c}.U_matrix_{nu}")
            params[f"products_{i}.contractions.{j}.weights_max"] = take(f"{c}.weights_max")
            for n in range(correlation - 1):
                params[f"products_{i}.contractions.{j}.weights_{n}"] = take(f"{c}.weights.{n}")
        params[f"products_{i}.linear"] = take(f"products.{i}.linear.weight")
        if readout_cfg["type"] == "linear":
            params[f"readouts_{i}.linear"] = take(f"readouts.{i}.linear.weight")
        else:
            params[f"readouts_{i}.linear_1"] = take(f"readouts.{i}.linear_1.weight")
            params[f"readouts_{i}.linear_2"] = take(f"readouts.{i}.linear_2.weight")

    ae = np.asarray(take("atomic_energies_fn.atomic_energies"), dtype=np.float64)
    params["atomic_energies"] = np.atleast_2d(ae).reshape(len(heads), S) if ae.ndim < 2 else ae
    if "scale_shift.scale" in take.state:
        scale = np.atleast_1d(take("scale_shift.scale")).astype(np.float64)
        shift = np.atleast_1d(take("scale_shift.shift")).astype(np.float64)
    else:
        scale, shift = np.ones(1), np.zeros(1)
    params["scale"] = np.broadcast_to(scale, (len(heads),)).copy()
    params["shift"] = np.broadcast_to(shift, (len(heads),)).copy()

    _verify_wigner_buffers(take)
    left = take.leftovers(_ignorable)
    if left:
        raise CheckpointError(f"MACE conversion left torch parameters unused (unsupported feature?): {left[:8]}")

    config = {
        "family": "mace",
        "atomic_numbers": atomic_numbers,
        "r_max": r_max,
        "num_bessel": int(len(bessel_weights)),
        "num_polynomial_cutoff": p_cut,
        "max_ell": max_ell,
        "heads": heads,
        "head": head or default_head(heads),
        "distance_transform": distance_transform,
        "pair_repulsion": pair_repulsion,
        "radial_activation": radial_act or "silu",
        "layers": layers,
    }
    _check_shapes(config, params, constants, model)
    return config, {k: np.asarray(v) for k, v in params.items()}, constants


def _verify_wigner_buffers(take: _Taker) -> None:
    """e3nn's compiled tensor products store their Wigner-3j tensors: check ours equal them."""
    import re

    pat = re.compile(r"\._w3j_(\d+)_(\d+)_(\d+)$")
    for key, value in take.state.items():
        m = pat.search(key)
        if not m:
            continue
        l1, l2, l3 = map(int, m.groups())
        ours = I.wigner_3j(l1, l2, l3)
        if value.shape != ours.shape or not np.allclose(value, ours, atol=1e-6):
            raise CheckpointError(
                f"{key}: the checkpoint's Wigner-3j tensor differs from jaxuft's e3nn-0.4 convention; "
                "this e3nn version is not supported"
            )
        take.used.add(key)


def _check_shapes(config, params, constants, model) -> None:
    """Cross-check the derived layout against the checkpoint (fails loudly on any mismatch)."""
    S = len(config["atomic_numbers"])
    for i, spec in enumerate(layer_specs(config)):
        inter = model.interactions[i]
        expect = {
            f"interactions_{i}.linear_up": linear_numel(spec.node_feats_irreps, spec.edge_irreps),
            f"interactions_{i}.linear": linear_numel(spec.irreps_mid, spec.target_irreps),
        }
        src = spec.node_feats_irreps if "Residual" in spec.interaction else spec.target_irreps
        expect[f"interactions_{i}.skip_tp"] = skip_numel(src, S, spec.skip_irreps_out)
        for name, n in expect.items():
            if params[name].size != n:
                raise CheckpointError(f"{name}: expected {n} weights from the irreps, found {params[name].size}")
        ins = [tuple(int(v) for v in (x.args[:3] if hasattr(x, "args") and x.args else tuple(x)[:3])) for x in inter.conv_tp.instructions]
        if ins and ins != [tuple(t) for t in spec.conv_instructions]:
            raise CheckpointError(f"interaction {i}: tensor-product instructions differ from mace-torch's layout: {ins[:4]} vs {list(spec.conv_instructions)[:4]}")
        if params[f"interactions_{i}.radial_mlp.{len(spec.radial_mlp) - 2}"].shape[1] != spec.radial_mlp[-1]:
            raise CheckpointError(f"interaction {i}: radial MLP output does not match the tensor product")
