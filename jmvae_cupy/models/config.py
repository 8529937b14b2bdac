"""Model configs: two modalities, their likelihoods and networks, in a small TOML or JSON file.

    from jmvae_cupy.models.config import read_config_file, resolve, arch_from_model
    user = read_config_file("my.toml")                          # checked; omitted keys are None
    model = resolve(user, x_shape=(64,), w_dim=3, stats=...)    # every key filled in (a plain dict)
    arch = arch_from_model(model, name="iris")                  # the Arch that build_model takes

The keys (docs/data.md has the full reference; jmvae_cupy/configs/mnist.toml and celeba.toml are
the paper's two setups written this way)::

    variant = "kl"      latent = 64      alpha = 1.0      joint = ""
    [x]  likelihood = "bernoulli" | "categorical" | "gaussian_fixed" | "gaussian_learned"
         variance = 1.0 (gaussian_fixed)   encoder = "D512R-D512R"   encoder_alone = ...
         decoder = "D512R-D512R"   (up to the output layer, which is added: D<outputs> or DC<channels>)
    [w]  the same keys
    [jmvae_h]  prior_z1 = "D512R-D512R"   chain = "D64-D512R-D512R"
    [train]    epochs, batch_size, lr, warmup

Networks are strings in the paper's notation (jmvae_cupy/nets.py).  ``encoder`` is the modality's
branch of q(z|x,w); ``joint`` the layers after the two branches are concatenated;
``encoder_alone`` the trunk of JMVAE-kl's q(z|x) (q(z|w)), by default the branch followed by the
joint layers.  A key left out is filled by :func:`resolve` from the data (:func:`infer_config`) or
from a built-in setup.  :class:`ConfigError` (a ModelError) says what is wrong in one line.
"""

from __future__ import annotations

import difflib
import json
import math
import os
from importlib import resources

from ..distributions import LIKELIHOODS, likelihood
from ..nets import _SHAPE, _TOKEN
from .arch import Arch
from .base import ModelError

VARIANTS = ("jmvae", "kl", "h")
MODALITY_KEYS = ("likelihood", "variance", "encoder", "encoder_alone", "decoder")
TOP_KEYS = ("variant", "latent", "alpha", "joint", "x", "w", "jmvae_h", "train")
SECTIONS = {"x": MODALITY_KEYS, "w": MODALITY_KEYS, "jmvae_h": ("prior_z1", "chain"),
            "train": ("epochs", "batch_size", "lr", "warmup")}
BUILTIN = ("mnist", "celeba")  # jmvae_cupy/configs/<name>.toml


class ConfigError(ModelError):
    """A model config that cannot be used (one-line message naming the file and the key)."""


# ------------------------------------------------------------------------------------------ reading
def read_config_file(path) -> dict:
    """The checked config in ``path`` (``.toml`` or ``.json``): :func:`check_config`'s dict."""
    path = str(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".toml", ".json"):
        raise ConfigError(f"{path}: a model config must be a .toml or .json file")
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such config file" if not os.path.exists(path) else f"{path}: not a file")
    try:
        with open(path, "rb") as f:
            raw = f.read()
        text = raw.decode("utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: unreadable ({e.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    return parse_config(text, ext[1:], path)


def parse_config(text: str, fmt: str, where: str) -> dict:
    """Parse ``text`` as ``fmt`` ("toml" or "json") and check it (errors name ``where``)."""
    try:
        if fmt == "toml":
            import tomllib  # noqa: PLC0415  (Python >= 3.11)

            cfg = tomllib.loads(text)
        else:
            cfg = json.loads(text)
    except ImportError:
        raise ConfigError(f"{where}: reading TOML needs Python >= 3.11 (write the config as .json)") from None
    except (ValueError, RecursionError) as e:  # tomllib.TOMLDecodeError and JSONDecodeError are ValueErrors
        raise ConfigError(f"{where}: not valid {fmt.upper()} ({str(e).splitlines()[0][:100]})") from None
    return check_config(cfg, where)


def builtin_config(name: str) -> dict:
    """The checked built-in config ``name`` ("mnist" or "celeba")."""
    if name not in BUILTIN:
        raise ConfigError(f"unknown built-in config {name!r}: choose one of {', '.join(BUILTIN)}")
    text = resources.files("jmvae_cupy").joinpath("configs", f"{name}.toml").read_text(encoding="utf-8")
    return parse_config(text, "toml", f"built-in config {name}")


def _unknown(key: str, allowed, where: str, section: str = "") -> ConfigError:
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else f" (keys: {', '.join(allowed)})"
    return ConfigError(f"{where}: unknown key {section}{key!r}{hint}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_config(cfg, where: str) -> dict:
    """``cfg`` (a parsed file) checked key by key: a dict with every key of the schema, None where the
    file leaves it out.  Networks are checked for their notation here and for their shapes when the
    model is built."""
    if not isinstance(cfg, dict):
        raise ConfigError(f"{where}: a model config is a table of keys (a JSON object), not {type(cfg).__name__}")
    for k in cfg:
        if k not in TOP_KEYS:
            raise _unknown(k, TOP_KEYS, where)
    out = {k: cfg.get(k) for k in ("variant", "latent", "alpha", "joint")}
    for name, keys in SECTIONS.items():
        sec = cfg.get(name, {})
        if not isinstance(sec, dict):
            raise ConfigError(f"{where}: {name!r} must be a table of keys ([{name}] in TOML, an object in JSON)")
        for k in sec:
            if k not in keys:
                raise _unknown(k, keys, where, f"{name}.")
        out[name] = {k: sec.get(k) for k in keys}

    def bad(key, what, value):
        return ConfigError(f"{where}: {key} must be {what}, not {json.dumps(value)[:40]}")

    if out["variant"] is not None and out["variant"] not in VARIANTS:
        raise bad("variant", " | ".join(f'"{v}"' for v in VARIANTS), out["variant"])
    if out["latent"] is not None and not (_is_int(out["latent"]) and out["latent"] >= 1):
        raise bad("latent", "an integer >= 1", out["latent"])
    if out["alpha"] is not None and not (_is_number(out["alpha"]) and out["alpha"] >= 0):
        raise bad("alpha", "a finite number >= 0", out["alpha"])
    nets = [("joint", out["joint"])]
    for m in ("x", "w"):
        s = out[m]
        if s["likelihood"] is not None and s["likelihood"] not in LIKELIHOODS:
            raise bad(f"{m}.likelihood", " | ".join(f'"{n}"' for n in LIKELIHOODS), s["likelihood"])
        if s["variance"] is not None:
            if s["likelihood"] != "gaussian_fixed":
                raise ConfigError(f"{where}: {m}.variance applies to likelihood \"gaussian_fixed\" only")
            if not (_is_number(s["variance"]) and s["variance"] > 0):
                raise bad(f"{m}.variance", "a finite number > 0", s["variance"])
        nets += [(f"{m}.{k}", s[k]) for k in ("encoder", "encoder_alone", "decoder")]
    nets += [(f"jmvae_h.{k}", v) for k, v in out["jmvae_h"].items()]
    for key, spec in nets:
        if spec is not None:
            check_net(spec, f"{where}: {key}", allow_empty=key == "joint" or key.endswith(".decoder"))
    t = out["train"]
    for key, lo in (("epochs", 1), ("batch_size", 1)):
        if t[key] is not None and not (_is_int(t[key]) and t[key] >= lo):
            raise bad(f"train.{key}", f"an integer >= {lo}", t[key])
    if t["lr"] is not None and not (_is_number(t["lr"]) and t["lr"] > 0):
        raise bad("train.lr", "a finite number > 0", t["lr"])
    if t["warmup"] is not None and not (_is_number(t["warmup"]) and t["warmup"] >= 0):
        raise bad("train.warmup", "a finite number >= 0", t["warmup"])
    return out


def check_net(spec, where: str, allow_empty: bool = False) -> None:
    """A network string's notation (nets.parse's tokens); its shapes are checked when it is built."""
    if not isinstance(spec, str):
        raise ConfigError(f"{where} must be a network string such as \"D512R-D512R\", not {json.dumps(spec)[:40]}")
    if spec == "":
        if not allow_empty:
            raise ConfigError(f"{where} is empty: it needs at least one layer")
        return
    for tok in spec.split("-"):
        tok = tok.strip()
        if tok != "F" and _TOKEN.match(tok) is None and _SHAPE.match(tok) is None:
            raise ConfigError(f"{where}: cannot parse token {tok!r} of {spec!r} (tokens: DkR, DkBR, CkBR, DCkBR, F, "
                              "CxHxW; docs/data.md)")


# ------------------------------------------------------------------------------------------ defaults
def conv_nets(x_shape) -> tuple | None:
    """(encoder, decoder up to its output layer) of the CelebA conv stack for square images (C, S, S)
    with S = 4 * 2^n, n >= 1: n convs from S down to 4x4 (channels 64, 128, 256, 256, 256...), a dense
    layer of 4096 = 256 x 4 x 4, and n - 1 deconvs back (the output deconv, to S, is added).  At 64x64
    the appendix's networks.  None for any other shape.

        conv_nets((3, 64, 64)) == ("C64R-C128BR-C256BR-C256BR-F", "D4096R-DC256BR-DC128BR-DC64BR")
        conv_nets((1, 8, 8)) == ("C64R-F", "D4096R-256x4x4")
    """
    if len(x_shape) != 3 or x_shape[1] != x_shape[2] or x_shape[1] < 8:
        return None
    n = (x_shape[1] // 4).bit_length() - 1
    if 4 << n != x_shape[1]:
        return None
    convs = ([64, 128] + [256] * n)[:n]
    enc = "-".join(f"C{k}{'R' if i == 0 else 'BR'}" for i, k in enumerate(convs)) + "-F"
    dec = "-".join(["D4096R"] + [f"DC{k}BR" for k in reversed(convs[:-1])])
    return enc, dec if n > 1 else dec + "-256x4x4"  # (8x8: the output deconv reads the 4x4 maps)


def infer_likelihood(stats: dict) -> str:
    """The likelihood of a modality from its values: one-hot rows (2+ columns) -> categorical, values
    in {0, 1} -> bernoulli, anything else -> gaussian_fixed.  ``stats``: data.paired.value_stats."""
    if stats["one_hot"]:
        return "categorical"
    if stats["binary"]:
        return "bernoulli"
    return "gaussian_fixed"


def infer_config(x_shape, w_dim: int, x_stats: dict, w_stats: dict) -> dict:
    """The config chosen from the data alone: likelihoods from the values (:func:`infer_likelihood`);
    for square images (C, S, S) the CelebA setup with its conv stack (:func:`conv_nets`), for
    anything else the MNIST setup's dense nets (after a flatten F for inputs that are not vectors)."""
    conv = conv_nets(tuple(x_shape))
    cfg = builtin_config("celeba" if conv else "mnist")
    for m, stats in (("x", x_stats), ("w", w_stats)):
        name = infer_likelihood(stats)
        cfg[m]["likelihood"] = name
        cfg[m]["variance"] = 1.0 if name == "gaussian_fixed" else None
    if conv:
        cfg["x"]["encoder"], cfg["x"]["decoder"] = conv
    elif len(x_shape) > 1:
        cfg["x"]["encoder"] = "F-" + cfg["x"]["encoder"]
    return cfg


def merge(user: dict, base: dict) -> dict:
    """``user``'s keys, and ``base``'s where ``user`` has None (both checked configs).  A likelihood
    set in ``user`` takes its variance from ``user`` alone (the base's belongs to the base's family)."""
    out = {k: (user[k] if user[k] is not None else base[k]) for k in ("variant", "latent", "alpha", "joint")}
    for name in SECTIONS:
        out[name] = {k: (user[name][k] if user[name][k] is not None else base[name][k]) for k in SECTIONS[name]}
    for m in ("x", "w"):
        if user[m]["likelihood"] is not None:
            out[m]["variance"] = user[m]["variance"]
        if out[m]["likelihood"] == "gaussian_fixed" and out[m]["variance"] is None:
            out[m]["variance"] = 1.0
    return out


def scale_widths(spec: str, width: float) -> str:
    """``spec`` with every layer's width k (units or channels) made max(1, round(k width)); a dense layer
    that feeds a reshape keeps its size a whole number of the reshaped images (k = C' x H x W with C'
    scaled).  width 1: ``spec`` unchanged."""
    if width == 1.0 or not spec:
        return spec
    c = lambda k: max(1, int(round(k * width)))  # noqa: E731
    toks = [t.strip() for t in spec.split("-")]
    out = []
    for i, tok in enumerate(toks):
        nxt = toks[i + 1] if i + 1 < len(toks) else ""
        m, s = _TOKEN.match(tok), _SHAPE.match(tok)
        if s is not None:
            out.append(f"{c(int(s.group(1)))}x{s.group(2)}x{s.group(3)}")
        elif m is None:
            out.append(tok)  # F
        else:
            kind, k = m.group(1), int(m.group(2))
            if kind == "D" and _SHAPE.match(nxt):
                _, h, w = (int(g) for g in _SHAPE.match(nxt).groups())
                units = c(k // (h * w)) * h * w
            elif kind == "D" and nxt.startswith("DC") and k % 16 == 0:  # the implicit reshape to (k/16, 4, 4)
                units = c(k // 16) * 16
            else:
                units = c(k)
            out.append(f"{kind}{units}{m.group(3)}{m.group(4)}")
    return "-".join(out)


def resolve(user: dict, x_shape, w_dim: int, base: dict, latent=None, width: float = 1.0) -> dict:
    """The model record of a run: ``user`` filled in from ``base`` (the dataset's built-in config, or
    :func:`infer_config` of the data), ``latent`` (train --latent) over both, every network scaled by
    ``width``.  Keys: x_shape, w_dim, latent, joint, x, w (likelihood, [variance,] encoder,
    encoder_alone, decoder), jmvae_h (prior_z1, chain): what :func:`arch_from_model` builds."""
    cfg = merge(user, base)
    joint = cfg["joint"] or ""
    rec = {"x_shape": [int(s) for s in x_shape], "w_dim": int(w_dim),
           "latent": int(latent if latent is not None else cfg["latent"]), "joint": scale_widths(joint, width)}
    for m in ("x", "w"):
        s = cfg[m]
        for key in ("likelihood", "encoder"):
            if s[key] is None:
                raise ConfigError(f"{m}.{key} is not set and has no default")
        alone = s["encoder_alone"] if s["encoder_alone"] is not None else "-".join(filter(None, [s["encoder"], joint]))
        rec[m] = {"likelihood": s["likelihood"], **({"variance": float(s["variance"])} if s["variance"] else {}),
                  "encoder": scale_widths(s["encoder"], width), "encoder_alone": scale_widths(alone, width),
                  "decoder": scale_widths(s["decoder"] or "", width)}
    rec["jmvae_h"] = {k: scale_widths(v, width) for k, v in cfg["jmvae_h"].items()}
    return rec


def train_defaults(user: dict, base: dict) -> dict:
    """{variant, alpha, epochs, batch_size, lr, warmup}: the config's, else the base's (None if neither)."""
    cfg = merge(user, base)
    return {"variant": cfg["variant"], "alpha": cfg["alpha"], **cfg["train"]}


# ------------------------------------------------------------------------------------------ building
def output_layer(decoder: str, shape, outputs_per_feature: int) -> str:
    """The decoder's output token: ``DC<k C>`` after a trunk that ends in an image (C, H, W) for an
    image-shaped modality, else ``D<k D>`` (flat), k the likelihood's outputs per feature."""
    last = decoder.split("-")[-1].strip() if decoder else ""
    image_trunk = last.startswith(("C", "DC")) or _SHAPE.match(last) is not None
    if image_trunk and len(shape) == 3:
        return f"DC{outputs_per_feature * shape[0]}"
    return f"D{outputs_per_feature * math.prod(shape)}"


def arch_from_model(rec: dict, name: str = "data"):
    """The :class:`~jmvae_cupy.models.arch.Arch` of a model record (:func:`resolve`; a run's
    config.json holds it as "model")."""
    try:
        x_shape, w_dim = tuple(int(s) for s in rec["x_shape"]), int(rec["w_dim"])
        liks = {m: likelihood(rec[m]["likelihood"], rec[m].get("variance", 1.0)) for m in ("x", "w")}

        def dec(m, shape):
            trunk = rec[m]["decoder"]
            return "-".join(filter(None, [trunk, output_layer(trunk, shape, liks[m].outputs_per_feature)]))

        return Arch(name=name, x_shape=x_shape, w_dim=w_dim, x_lik=liks["x"], w_lik=liks["w"],
                    enc_x=rec["x"]["encoder"], enc_w=rec["w"]["encoder"], enc_joint=rec["joint"],
                    enc_x_uni=rec["x"]["encoder_alone"], enc_w_uni=rec["w"]["encoder_alone"],
                    dec_x=dec("x", x_shape), dec_w=dec("w", (w_dim,)), prior_z1=rec["jmvae_h"]["prior_z1"],
                    h_chain=rec["jmvae_h"]["chain"], latent=int(rec["latent"]))
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"not a model record ({type(e).__name__}: {e})") from None


def builtin_base(name: str, x_shape) -> dict:
    """The built-in config ``name`` for x of ``x_shape``: CelebA's x networks are the conv stack of
    the image size (:func:`conv_nets`)."""
    base = builtin_config(name)
    if name == "celeba":
        conv = conv_nets(tuple(x_shape))
        if conv is None:
            raise ConfigError(f"the CelebA setup needs square images (C, S, S) with S = 4 * 2^n >= 8, got {x_shape}")
        base["x"]["encoder"], base["x"]["decoder"] = conv
    return base


def builtin_arch(name: str, x_shape, w_dim: int, latent=None, width: float = 1.0):
    """The Arch of the built-in setup ``name`` for data of these shapes (the path of any config)."""
    base = builtin_base(name, x_shape)
    return arch_from_model(resolve(base, x_shape, w_dim, base, latent, width), name)


def empty_config() -> dict:
    """A config that sets nothing: every key from the base."""
    return check_config({}, "")


def check_fit(rec: dict, x_stats: dict, w_stats: dict) -> None:
    """The likelihoods of a model record fit the data's values (``stats``: data.paired.value_stats):
    Bernoulli needs values in [0, 1]; categorical vectors of non-negative weights."""
    for m, stats in (("x", x_stats), ("w", w_stats)):
        lik = rec[m]["likelihood"]
        shape = rec["x_shape"] if m == "x" else [rec["w_dim"]]
        if lik == "bernoulli" and not (stats["min"] >= 0 and stats["max"] <= 1):
            raise ConfigError(f"{m}.likelihood \"bernoulli\" needs values in [0, 1]; the data's {m} lie in "
                              f"[{stats['min']:.4g}, {stats['max']:.4g}]")
        if lik == "categorical" and (len(shape) != 1 or stats["min"] < 0):
            raise ConfigError(f"{m}.likelihood \"categorical\" needs vectors of non-negative class weights "
                              f"(one-hot rows); the data's {m} are {tuple(shape)} per row in "
                              f"[{stats['min']:.4g}, {stats['max']:.4g}]")


def model_record(user, x_shape, w_dim: int, base: dict, x_stats: dict, w_stats: dict, latent=None,
                 width: float = 1.0) -> dict:
    """:func:`resolve` of ``user`` (a checked config, or None: the base alone), checked against the data
    (:func:`check_fit`): the "model" a run's config.json records."""
    rec = resolve(user if user is not None else empty_config(), x_shape, w_dim, base, latent, width)
    check_fit(rec, x_stats, w_stats)
    return rec
