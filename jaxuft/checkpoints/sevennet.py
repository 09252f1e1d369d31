"""SevenNet (``sevenn``) checkpoints -> jaxuft ``nequip`` family (config + params), torch-free.

A SevenNet checkpoint (``checkpoint_*.pth``, written by ``torch.save``) is a dict
``{"config": {...}, "model_state_dict": {...}, ...}``.  Read it with
:func:`jaxuft.checkpoints.torch_pickle.read_checkpoint` (tensors become numpy
arrays, nothing is executed) and pass the object to :func:`convert_sevennet`.

Supported: ``interaction_type: nequip`` with ``self_connection_type: linear``,
Bessel radial basis, XPLOR or polynomial cutoff, with or without parity, any
channel counts / lmax / number of layers / radial MLP sizes / irreps (manual or
inferred), species-wise or global shift/scale, and the old (< 0.11) layout of
the convolution weights that sevenn itself patches on load
(``sevenn.scripts.backward_compatibility``).  Not supported (a clear
:class:`~jaxuft.errors.CheckpointError` is raised): multi-fidelity/modal models,
``nequip``-type (tensor-product) self-connections, FCN readouts, biases in linear
layers, cuEquivariance/FlashTP-trained state dicts.

Mapping (sevenn module -> jaxuft param):

====================================================  =====================================
``edge_embedding.basis_function.coeffs``              ``radial_frequencies``
``onehot_to_feature_x.linear.weight``                 ``embedding`` (rows by sorted Z)
``{t}_self_connection_intro.linear.weight``           ``layer_{t}_self_connection/{irrep}``
``{t}_self_interaction_1.linear.weight``              ``layer_{t}_self_interaction_1/{irrep}``
``{t}_convolution.weight_nn.layer{k}.weight``         ``layer_{t}_radial_mlp/w{k}``
``{t}_convolution.denominator``                       config ``denominators[t]``
``{t}_self_interaction_2.linear.weight``              ``layer_{t}_self_interaction_2/{irrep}``
``reduce_input_to_hidden.linear.weight``              ``readout_hidden/0e``
``reduce_hidden_to_energy.linear.weight``             ``readout_out/0e``
``rescale_atomic_energy.shift`` / ``.scale``          ``shift`` / ``scale`` (sorted Z)
====================================================  =====================================

e3nn ``Linear`` weights are flat vectors of ``(mul_in, mul_out)`` blocks, one per
pair of input/output irreps entries with the same irrep (input-major); they are
reassembled into one ``(fan_in, fan_out)`` matrix per irrep.  The radial MLP's
last layer has one column block per tensor-product path; those columns are put
in sorted-path order (sevenn >= 0.11) and multiplied by the sign relating the
checkpoint's stored Wigner-3j buffers (``..._w3j_{l1}_{l2}_{l3}``) to e3nn-jax's
Clebsch-Gordan coefficients, so the product ``weight x coefficient`` is exactly
what sevenn computes.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from ..errors import CheckpointError
from ..models.nequip import (
    ACTIVATIONS,
    Irrep,
    conv_paths,
    conv_paths_unsorted_order,
    gate_irreps,
    irreps_str,
    layout,
    parse_irreps,
    sh_irreps,
    tp_out_irreps,
    _cg,
)

_SUPPORTED_CUTOFFS = ("XPLOR", "poly_cut")


# ---------------------------------------------------------------------------------------------
# detection
# ---------------------------------------------------------------------------------------------
def looks_like_sevennet(obj: Any) -> bool:
    """True for the dict a SevenNet ``checkpoint_*.pth`` unpickles to."""
    if not isinstance(obj, Mapping):
        return False
    cfg, sd = obj.get("config"), obj.get("model_state_dict")
    if not isinstance(cfg, Mapping) or not isinstance(sd, Mapping):
        return False
    has_cfg = ("_type_map" in cfg or "chemical_species" in cfg) and (
        "num_convolution_layer" in cfg or "interaction_type" in cfg
    )
    has_sd = any(str(k).endswith("_convolution.weight_nn.layer0.weight") or " convolution." in str(k) for k in sd)
    return bool(has_cfg and has_sd)


# ---------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------
def _version_tuple(v: str) -> tuple[tuple[int, int, int], str]:
    parts = str(v).split(".")
    try:
        nums = tuple(int(p) for p in parts[:3])
    except ValueError:
        raise CheckpointError(f"SevenNet checkpoint: cannot parse version {v!r}") from None
    suffix = parts[3] if len(parts) > 3 else ""
    return nums, suffix


def _as_list(x) -> list:
    if hasattr(x, "tolist"):
        x = x.tolist()
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _arr(sd: Mapping, key: str) -> np.ndarray:
    if key not in sd:
        raise CheckpointError(f"SevenNet checkpoint: missing tensor {key!r} in model_state_dict")
    return np.asarray(sd[key], dtype=np.float64)


def _map_old_names(sd: Mapping) -> dict:
    """Module names before sevenn 0.10 (``'0 convolution'`` ...) -> current names."""
    mapping = {
        "EdgeEmbedding": "edge_embedding",
        "reducing nn input to hidden": "reduce_input_to_hidden",
        "reducing nn hidden to energy": "reduce_hidden_to_energy",
        "rescale atomic energy": "rescale_atomic_energy",
    }
    for i in range(32):
        mapping[f"{i} self connection intro"] = f"{i}_self_connection_intro"
        mapping[f"{i} convolution"] = f"{i}_convolution"
        mapping[f"{i} self interaction 2"] = f"{i}_self_interaction_2"
        mapping[f"{i} equivariant gate"] = f"{i}_equivariant_gate"
    out = {}
    for k, v in sd.items():
        head, _, tail = str(k).partition(".")
        tail = tail.replace("denumerator", "denominator")
        out[(mapping.get(head, head) + "." + tail) if tail else mapping.get(head, head)] = v
    return out


def _simplify(entries) -> tuple:
    out: list = []
    for mul, ir in entries:
        if out and out[-1][1] == ir:
            out[-1] = (out[-1][0] + mul, ir)
        elif mul > 0:
            out.append((mul, ir))
    return tuple(out)


def _sorted_simplified(entries) -> tuple:
    order = sorted(range(len(entries)), key=lambda k: (entries[k][1].sort_key(), k))
    return _simplify([entries[k] for k in order])


def e3nn_gate_irreps_in(out_entries: tuple) -> tuple:
    """``e3nn.nn.Gate(...).irreps_in`` for the gate producing ``out_entries`` (sorted, simplified)."""
    scalars, gates, gated = gate_irreps(out_entries)
    return _sorted_simplified(_simplify(scalars) + _simplify(gates) + _simplify(gated))


def linear_weight_to_blocks(flat: np.ndarray, in_entries: tuple, out_entries: tuple, where: str) -> dict:
    """Flat ``e3nn.o3.Linear`` weight -> ``{irrep_str: (fan_in, fan_out)}`` per-irrep matrices."""
    flat = np.asarray(flat, dtype=np.float64).reshape(-1)
    lay_in, lay_out = layout(tuple(in_entries)), layout(tuple(out_entries))
    muls_in = {ir: sum(b[2] for b in bl) for ir, bl in lay_in.items()}
    muls_out = {ir: sum(b[2] for b in bl) for ir, bl in lay_out.items()}
    mats = {ir: np.zeros((muls_in[ir], muls_out[ir])) for ir in muls_out if muls_in.get(ir, 0) > 0}
    pos = 0
    for i_in, (m_in, ir_in) in enumerate(in_entries):
        for i_out, (m_out, ir_out) in enumerate(out_entries):
            if ir_in != ir_out or m_in == 0 or m_out == 0:
                continue
            n = m_in * m_out
            if pos + n > flat.size:
                raise CheckpointError(
                    f"SevenNet checkpoint: {where} has {flat.size} weights, fewer than irreps "
                    f"{irreps_str(in_entries)} -> {irreps_str(out_entries)} need"
                )
            r0 = [b[1] for b in lay_in[ir_in] if b[0] == i_in][0]
            c0 = [b[1] for b in lay_out[ir_out] if b[0] == i_out][0]
            mats[ir_in][r0 : r0 + m_in, c0 : c0 + m_out] = flat[pos : pos + n].reshape(m_in, m_out)
            pos += n
    if pos != flat.size:
        raise CheckpointError(
            f"SevenNet checkpoint: {where} has {flat.size} weights but irreps "
            f"{irreps_str(in_entries)} -> {irreps_str(out_entries)} need {pos}"
        )
    return {str(ir): m for ir, m in mats.items()}


def infer_irreps_out(x_entries, filter_entries, lmax: int, even_only: bool, multiplicity: int) -> tuple:
    """sevenn's ``util.infer_irreps_out(..., fix_multiplicity=multiplicity)``."""
    keep = tp_out_irreps(tuple(x_entries), tuple(filter_entries), lmax, even_only)
    return tuple((multiplicity, ir) for ir in sorted(keep, key=Irrep.sort_key))


def _tp_mid_entries(x_entries, filter_entries, keep) -> tuple:
    """sevenn's ``irreps_out_tp`` as e3nn sees it: FullTensorProduct irreps, sorted, simplified, filtered."""
    raw = []
    for mul, ir_x in x_entries:
        for _, ir_f in filter_entries:
            for l in range(abs(ir_x.l - ir_f.l), ir_x.l + ir_f.l + 1):
                ir = Irrep(l, ir_x.p * ir_f.p)
                if ir in keep:
                    raw.append((mul, ir))
    return _sorted_simplified(raw)


# ---------------------------------------------------------------------------------------------
# conversion
# ---------------------------------------------------------------------------------------------
def _check_supported(cfg: Mapping) -> None:
    problems = []
    if cfg.get("interaction_type", "nequip") != "nequip":
        problems.append(f"interaction_type {cfg.get('interaction_type')!r} (only 'nequip')")
    sc = cfg.get("self_connection_type", "nequip")
    if any(s != "linear" for s in (_as_list(sc) if not isinstance(sc, str) else [sc])):
        problems.append(f"self_connection_type {sc!r} (only 'linear', as in SevenNet-0)")
    if cfg.get("use_modality", False):
        problems.append("multi-fidelity (use_modality) models")
    if cfg.get("readout_as_fcn", False):
        problems.append("readout_as_fcn")
    if cfg.get("use_bias_in_linear", False):
        problems.append("use_bias_in_linear")
    rb = cfg.get("radial_basis", {}) or {}
    if rb.get("radial_basis_name", "bessel") != "bessel":
        problems.append(f"radial basis {rb.get('radial_basis_name')!r} (only 'bessel')")
    cf = cfg.get("cutoff_function", {}) or {}
    if cf.get("cutoff_function_name", "poly_cut") not in _SUPPORTED_CUTOFFS:
        problems.append(f"cutoff function {cf.get('cutoff_function_name')!r}")
    cue = cfg.get("cuequivariance_config", {}) or {}
    if isinstance(cue, Mapping) and cue.get("use", False):
        problems.append("cuEquivariance-trained state dict (re-save it with the e3nn backend)")
    if cfg.get("use_flash_tp", False) or cfg.get("use_oeq", False):
        problems.append("FlashTP/OpenEquivariance-trained state dict")
    for key in ("act_radial",):
        if cfg.get(key, "silu") not in ACTIVATIONS:
            problems.append(f"{key} {cfg.get(key)!r}")
    if problems:
        raise CheckpointError(
            "this SevenNet checkpoint uses features jaxuft's nequip family does not implement: "
            + "; ".join(problems)
        )


def convert_sevennet(obj: Mapping) -> tuple[dict, dict]:
    """``(config, params)`` of the jaxuft ``nequip`` model equivalent to a SevenNet checkpoint.

    ``obj`` is what :func:`~jaxuft.checkpoints.torch_pickle.read_checkpoint` returns
    for a ``checkpoint_*.pth`` file.  ``params`` is a nested dict of float64 numpy arrays.
    """
    if not looks_like_sevennet(obj):
        raise CheckpointError("not a SevenNet checkpoint (expected a dict with 'config' and 'model_state_dict')")
    cfg = dict(obj["config"])
    version = str(cfg.get("version", "0.0.0"))
    vnum, vsuffix = _version_tuple(version)
    sd = dict(obj["model_state_dict"])
    if vnum < (0, 10, 0):
        sd = _map_old_names(sd)
    _check_supported(cfg)

    # ---- hyperparameters ---------------------------------------------------------------------
    type_map = {int(z): int(i) for z, i in dict(cfg["_type_map"]).items()}
    n_species = len(type_map)
    zs = sorted(type_map)
    perm = np.array([type_map[z] for z in zs])  # jaxuft species k <- sevenn type perm[k]
    if sorted(perm.tolist()) != list(range(n_species)):
        raise CheckpointError("SevenNet checkpoint: _type_map is not a permutation of 0..n-1")

    cutoff = float(cfg["cutoff"])
    n_layers = int(cfg["num_convolution_layer"])
    lmax = int(cfg["lmax"])
    lmax_edge = int(cfg.get("lmax_edge", -1))
    lmax_node = int(cfg.get("lmax_node", -1))
    lmax_sh = lmax_edge if lmax_edge > 0 else lmax
    lmax_node = lmax_node if lmax_node > 0 else lmax
    parity = -1 if cfg.get("is_parity", True) else 1
    # sevenn <= 0.9 configs lacking the key mean un-normalised spherical harmonics
    normalize_sh = bool(cfg.get("_normalize_sph", vnum > (0, 9, 99)))
    filt = sh_irreps(lmax_sh, parity)

    manual = cfg.get("irreps_manual", False)
    if manual not in (False, None):
        node_irreps = [parse_irreps(str(s)) for s in manual]
        if len(node_irreps) != n_layers + 1:
            raise CheckpointError(
                f"SevenNet checkpoint: irreps_manual has {len(node_irreps)} entries, expected {n_layers + 1}"
            )
    else:
        channel = int(cfg["channel"])
        node_irreps = [((channel, Irrep(0, 1)),)]
        for t in range(n_layers):
            last = t == n_layers - 1
            node_irreps.append(
                infer_irreps_out(node_irreps[t], filt, 0 if last else lmax_node, last, channel)
            )

    cf = dict(cfg.get("cutoff_function", {}) or {})
    cf_name = cf.get("cutoff_function_name", "poly_cut")
    if cf_name == "XPLOR":
        cutoff_function = {"name": "XPLOR", "r_on": float(cf["cutoff_on"])}
    else:
        cutoff_function = {"name": "poly_cut", "p": int(cf.get("poly_cut_p_value", 6))}

    radial_hidden = [int(h) for h in _as_list(cfg.get("weight_nn_hidden_neurons", [64, 64]))]
    act_scalar = dict(cfg.get("act_scalar", {"e": "silu", "o": "tanh"}))
    act_gate = dict(cfg.get("act_gate", {"e": "silu", "o": "tanh"}))
    for name in list(act_scalar.values()) + list(act_gate.values()) + [cfg.get("act_radial", "silu")]:
        if name not in ACTIVATIONS:
            raise CheckpointError(f"SevenNet checkpoint: unsupported activation {name!r}")

    # ---- params --------------------------------------------------------------------------------
    params: dict[str, Any] = {}
    coeffs = _arr(sd, "edge_embedding.basis_function.coeffs").reshape(-1)
    num_basis = int(coeffs.size)
    params["radial_frequencies"] = coeffs

    x0 = node_irreps[0]
    if any(ir != Irrep(0, 1) for _, ir in x0):
        raise CheckpointError(f"SevenNet checkpoint: first node irreps must be scalars, got {irreps_str(x0)}")
    c0 = sum(m for m, _ in x0)
    emb = _arr(sd, "onehot_to_feature_x.linear.weight").reshape(-1)
    if emb.size != n_species * c0:
        raise CheckpointError(
            f"SevenNet checkpoint: onehot_to_feature_x has {emb.size} weights, expected {n_species}x{c0}"
        )
    params["embedding"] = emb.reshape(n_species, c0)[perm]

    old_layout = vnum < (0, 11, 0) or (vnum == (0, 11, 0) and vsuffix == "dev0")
    denominators = []
    for t in range(n_layers):
        x_e, out_e = node_irreps[t], node_irreps[t + 1]
        last = t == n_layers - 1
        lmax_out = max(ir.l for _, ir in out_e)
        keep = tp_out_irreps(x_e, filt, lmax_out, even_only=last)
        paths, _, n_w = conv_paths(x_e, filt, keep)
        gate_in = e3nn_gate_irreps_in(out_e)
        mid = _tp_mid_entries(x_e, filt, keep)
        pre = f"{t}_"
        params[f"layer_{t}_self_connection"] = linear_weight_to_blocks(
            _arr(sd, pre + "self_connection_intro.linear.weight"), x_e, gate_in, pre + "self_connection_intro"
        )
        params[f"layer_{t}_self_interaction_1"] = linear_weight_to_blocks(
            _arr(sd, pre + "self_interaction_1.linear.weight"), x_e, x_e, pre + "self_interaction_1"
        )
        params[f"layer_{t}_self_interaction_2"] = linear_weight_to_blocks(
            _arr(sd, pre + "self_interaction_2.linear.weight"), mid, gate_in, pre + "self_interaction_2"
        )
        # radial MLP
        sizes = [num_basis] + radial_hidden + [n_w]
        mlp = {}
        for k, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            w = _arr(sd, f"{pre}convolution.weight_nn.layer{k}.weight")
            if w.shape != (a, b):
                raise CheckpointError(
                    f"SevenNet checkpoint: {pre}convolution.weight_nn.layer{k}.weight has shape "
                    f"{w.shape}, expected {(a, b)} for irreps {irreps_str(x_e)} -> {irreps_str(out_e)}"
                )
            mlp[f"w{k}"] = w
        if f"{pre}convolution.weight_nn.layer{len(sizes) - 1}.weight" in sd:
            raise CheckpointError(f"SevenNet checkpoint: {pre}convolution radial MLP has more layers than configured")
        last_w = mlp[f"w{len(sizes) - 2}"]
        # columns: checkpoint order -> sorted path order, with the Wigner-3j sign folded in
        if old_layout:
            # sevenn < 0.11 kept the columns in generation order (its compat code re-sorts them)
            gen_index = conv_paths_unsorted_order(x_e, filt, keep)  # sorted path -> generation index
            inv = np.argsort(gen_index)
            gen_offsets = np.cumsum([0] + [paths[inv[g]].mul for g in range(len(paths))])
            src_offset = [int(gen_offsets[g]) for g in gen_index]
        else:
            src_offset = [p.weight_offset for p in paths]
        new_w = np.empty_like(last_w)
        for p, s0 in zip(paths, src_offset):
            l1, l2, l3 = x_e[p.i_in][1].l, filt[p.i_filter][1].l, p.ir_out.l
            sign = _w3j_sign(sd, f"{pre}convolution", l1, l2, l3)
            new_w[:, p.weight_offset : p.weight_offset + p.mul] = sign * last_w[:, s0 : s0 + p.mul]
        mlp[f"w{len(sizes) - 2}"] = new_w
        params[f"layer_{t}_radial_mlp"] = mlp
        den_key = f"{pre}convolution.denominator"
        if den_key in sd:
            denominators.append(float(np.asarray(sd[den_key]).reshape(-1)[0]))
        else:
            denominators.append(_config_denominator(cfg, t))

    final = node_irreps[-1]
    hidden = sum(m * ir.dim for m, ir in final) // 2
    hid = ((hidden, Irrep(0, 1)),)
    params["readout_hidden"] = linear_weight_to_blocks(
        _arr(sd, "reduce_input_to_hidden.linear.weight"), final, hid, "reduce_input_to_hidden"
    )
    params["readout_out"] = linear_weight_to_blocks(
        _arr(sd, "reduce_hidden_to_energy.linear.weight"), hid, ((1, Irrep(0, 1)),), "reduce_hidden_to_energy"
    )
    shift = _arr(sd, "rescale_atomic_energy.shift").reshape(-1)
    scale = _arr(sd, "rescale_atomic_energy.scale").reshape(-1)
    if shift.size == 1:
        shift = np.full(n_species, shift[0])
    if scale.size == 1:
        scale = np.full(n_species, scale[0])
    if shift.size != n_species or scale.size != n_species:
        raise CheckpointError(
            f"SevenNet checkpoint: shift/scale have {shift.size}/{scale.size} entries for {n_species} species"
        )
    params["shift"] = shift[perm]
    params["scale"] = scale[perm]

    # keep the checkpoint's precision (float32 for the released models: lossless, half the size)
    floats = [np.asarray(v).dtype for v in sd.values() if np.asarray(v).dtype.kind == "f"]
    out_dtype = np.float32 if floats and all(d == np.float32 for d in floats) else np.float64
    params = _cast_tree(params, out_dtype)

    config = {
        "family": "nequip",
        "atomic_numbers": zs,
        "r_max": cutoff,
        "node_irreps": [irreps_str(e) for e in node_irreps],
        "num_basis": num_basis,
        "cutoff_function": cutoff_function,
        "lmax_sh": lmax_sh,
        "sh_parity": parity,
        "normalize_sh": normalize_sh,
        "radial_hidden": radial_hidden,
        "radial_activation": str(cfg.get("act_radial", "silu")),
        "scalar_activation": act_scalar,
        "gate_activation": act_gate,
        "denominators": denominators,
        "readout_hidden": hidden,
        "descriptors": "0e features after each interaction layer, concatenated",
        "source": {"format": "sevenn", "sevenn_version": version},
    }
    return config, params


def _cast_tree(tree, dtype):
    if isinstance(tree, dict):
        return {k: _cast_tree(v, dtype) for k, v in tree.items()}
    return np.asarray(tree, dtype=dtype)


def _config_denominator(cfg: Mapping, t: int) -> float:
    den = cfg.get("conv_denominator", "avg_num_neigh")
    if isinstance(den, (int, float)) and not isinstance(den, bool):
        return float(den)
    avg = _as_list(cfg.get("avg_num_neigh", [1.0]))
    value = float(avg[t] if len(avg) > t else avg[0])
    return math.sqrt(value) if den == "sqrt_avg_num_neigh" else value


def _w3j_sign(sd: Mapping, conv: str, l1: int, l2: int, l3: int) -> float:
    """+1/-1 relating the checkpoint's Wigner-3j buffer to e3nn-jax's CG (+1 without a buffer)."""
    if l1 == 0 or l2 == 0 or l3 == 0:
        return 1.0  # e3nn specialises these paths; identical conventions (checked)
    key = f"{conv}.convolution._compiled_main_left_right._w3j_{l1}_{l2}_{l3}"
    if key not in sd:
        return 1.0
    stored = np.asarray(sd[key], dtype=np.float64)
    ref = _cg(l1, l2, l3)
    if stored.shape != ref.shape:
        raise CheckpointError(f"SevenNet checkpoint: {key} has shape {stored.shape}, expected {ref.shape}")
    overlap = float(np.sum(stored * ref))
    if abs(abs(overlap) - 1.0) > 1e-4 or np.max(np.abs(stored - np.sign(overlap) * ref)) > 1e-5:
        raise CheckpointError(
            f"SevenNet checkpoint: {key} is neither +- the Clebsch-Gordan coefficients jaxuft uses "
            "(unknown spherical-harmonics convention)"
        )
    return float(np.sign(overlap))
