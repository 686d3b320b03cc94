"""Inference-time mitigations: a registry of named, parameterized, seeded strategies that compose.

Definitions follow the DCR code (Somepalli et al. 2023), reused by Wen et al. (docs/methods.md):
- ``rna``  random number addition: k times, insert ``str(randint(0, 99999))`` at a uniformly random
  word boundary (start and end included).
- ``rt``   random token addition (RWA): k times, insert one random CLIP token (id < 49400), decoded.
- ``cwr``  caption word repetition: k times, insert a copy of a random word of the original prompt.
- ``gni``  Gaussian noise on the text embedding: add lambda * N(0, I) to the 77 x d hidden states,
  on both halves of the guidance batch (as DCR's diffusers version did) or the conditional one only.
- ``ren``  Ren et al. (ECCV 2024, renjie3/MemAttn): multiply the conditional branch's beginning-token
  cross-attention logit by ``c1`` (1.25) and mask the summary tokens after the prompt's end token
  (``mask=on``), at every step (``memlab.attention``).
- ``nemo`` Hintersdorf et al. (NeurIPS 2024, "Finding NeMo"): the prompt's memorization neurons in the
  cross-attention value layers, found against the world's statistics of non-memorized prompts (initial
  selection from theta 5, refined), multiplied by ``scale`` (0: off) at inference (``memlab.nemo``).
- ``jain`` Jain et al. (CVPR 2025): guidance ``before`` until the transition, then the normal guidance;
  ``mode=static``: while the timestep is above ``t`` (500 of 1000; ``before`` 0, or opposite e.g. -2);
  ``mode=dynamic``: until the first local minimum of ||eps(x_t, c) - eps(x_t, empty)|| along the
  trajectory, per seed (``before`` 1, as the authors' dynamic script).
- ``wen``  Wen et al. (ICLR 2024): optimize the prompt embedding at the first step with AdamW
  (lr 0.05, at most 10 iterations, the start token's gradient zeroed) until the text-conditional
  noise norm falls below an absolute target (Wen's ``target_loss``: ``target=``, else the world's
  calibrated ``wen_target``), so a prompt already below it is left untouched. ``target_ratio=r``
  is memlab's relative variant (stop below r x the initial norm), used only when asked for.
- ``sail`` Jeon et al. (ICML 2025, SAIL): optimize the starting noise with Adam (lr 0.05, at most 10
  steps) until the sharpness loss ||eps(x + d, c) - eps(x + d, empty)|| + gamma ||x|| falls below a target
  (``target=``, else the world's calibrated ``sail_target``); a seed already below it is left untouched
  (``memlab.sail``).

A strategy is a list of mitigations applied in order, written ``rna:k=2+gni:lam=0.1``. Every
random choice is drawn from a generator seeded by (mitigation seed, generation seed), so the same
spec and seed give the same effective prompt and noise.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import ClassVar

from .errors import MemlabError


@dataclass(frozen=True)
class Param:
    default: object
    lo: float | None = None
    hi: float | None = None
    choices: tuple | None = None

    def parse(self, name: str, mit: str, raw) -> object:
        typ = type(self.default)
        try:
            value = typ(raw) if not isinstance(raw, typ) else raw
        except (TypeError, ValueError):
            raise MemlabError(f"mitigation {mit}: parameter {name}={raw!r} is not "
                              f"{ {int: 'an integer', float: 'a number'}.get(typ, 'a ' + typ.__name__)}") from None
        if isinstance(value, float) and not math.isfinite(value):  # NaN passes every range check
            raise MemlabError(f"mitigation {mit}: {name}={value} is not a finite number")
        if self.choices is not None and value not in self.choices:
            raise MemlabError(f"mitigation {mit}: {name} must be one of {', '.join(map(str, self.choices))}")
        if (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
            raise MemlabError(f"mitigation {mit}: {name}={value} is out of range [{self.lo}, {self.hi}]")
        return value


@dataclass
class Mitigation:
    """Base: ``level`` is "prompt", "embedding" or "optimize"."""

    name: str = "none"
    params: dict = field(default_factory=dict)
    level = "none"
    PARAMS: ClassVar[dict] = {}  # name -> Param, per subclass (a class attribute, not a field)

    def rng(self, gen_seed: int) -> random.Random:
        return random.Random(int(self.params.get("seed", 0)) * 1_000_003 + int(gen_seed))

    def spec(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in self.params.items())
        return self.name + (f":{extra}" if extra else "")

    def to_dict(self) -> dict:
        return {"name": self.name, "params": dict(self.params)}

    def label(self) -> str:
        """The name with the parameters that differ from the defaults ("jain:mode=dynamic,before=1.0")."""
        cls = MITIGATIONS.get(self.name, type(self))
        extra = ",".join(f"{k}={v}" for k, v in self.params.items()
                         if k in cls.PARAMS and v != cls.PARAMS[k].default)
        return self.name + (f":{extra}" if extra else "")

    # hooks (identity by default)
    def apply_prompt(self, prompt: str, gen_seed: int, tokenizer=None) -> str:
        return prompt

    def apply_embeddings(self, cond, uncond, gen_seed: int):
        return cond, uncond

    @classmethod
    def finalize(cls, values: dict, given: set) -> dict:
        """Defaults that depend on another parameter (identity unless a mitigation needs it)."""
        return values


def random_clip_tokens(rng: random.Random, tokenizer, k: int) -> list[str]:
    """k random CLIP tokens (id < 49400), decoded to text, as DCR's random token addition."""
    return [tokenizer.decode([rng.randint(0, 49399)]).strip() or "x" for _ in range(k)]


def insert_words(prompt: str, words: list[str], rng: random.Random) -> str:
    """Insert each word at a uniformly random word boundary (start and end included), as DCR does."""
    for w in words:
        parts = prompt.split(" ")
        parts.insert(rng.randint(0, len(parts)), w)
        prompt = " ".join(parts)
    return prompt


class NoMitigation(Mitigation):
    PARAMS = {}


class RNA(Mitigation):
    level = "prompt"
    PARAMS = {"k": Param(4, 0, 50), "seed": Param(0, 0, 2**31 - 1)}

    def apply_prompt(self, prompt, gen_seed, tokenizer=None):
        rng = self.rng(gen_seed)
        k = self.params["k"]
        return insert_words(prompt, [str(rng.randint(0, 99999)) for _ in range(k)], rng)


class RandomTokens(Mitigation):
    level = "prompt"
    PARAMS = {"k": Param(4, 0, 50), "seed": Param(0, 0, 2**31 - 1)}

    def apply_prompt(self, prompt, gen_seed, tokenizer=None):
        if tokenizer is None:
            from .pipelines import clip_tokenizer

            tokenizer = clip_tokenizer()
        rng = self.rng(gen_seed)
        return insert_words(prompt, random_clip_tokens(rng, tokenizer, self.params["k"]), rng)


class CWR(Mitigation):
    level = "prompt"
    PARAMS = {"k": Param(4, 0, 50), "seed": Param(0, 0, 2**31 - 1)}

    def apply_prompt(self, prompt, gen_seed, tokenizer=None):
        rng = self.rng(gen_seed)
        original = [w for w in prompt.split(" ") if w]
        if not original:
            return prompt
        return insert_words(prompt, [rng.choice(original) for _ in range(self.params["k"])], rng)


class GNI(Mitigation):
    level = "embedding"
    PARAMS = {"lam": Param(0.1, 0.0, 10.0), "halves": Param("both", choices=("both", "cond")),
              "seed": Param(0, 0, 2**31 - 1)}

    def apply_embeddings(self, cond, uncond, gen_seed):
        import torch

        g = torch.Generator("cpu").manual_seed(int(self.params["seed"]) * 1_000_003 + int(gen_seed))
        lam = float(self.params["lam"])
        noise_c = torch.randn(cond.shape, generator=g, dtype=torch.float32).to(cond.device, cond.dtype)
        noise_u = torch.randn(uncond.shape, generator=g, dtype=torch.float32).to(uncond.device, uncond.dtype)
        cond = cond + lam * noise_c
        if self.params["halves"] == "both":
            uncond = uncond + lam * noise_u
        return cond, uncond


class Wen(Mitigation):
    """Applied by the generator (it needs the UNet): see ``memlab.generate.Generator``.
    ``target`` 0 means the model's calibrated target (``Generator.wen_target``); ``target_ratio`` > 0
    switches to the relative variant."""

    level = "optimize"
    PARAMS = {"lr": Param(0.05, 1e-5, 1.0), "iters": Param(10, 1, 100),
              "target": Param(0.0, 0.0, 1e6), "target_ratio": Param(0.0, 0.0, 1.0),
              "seed": Param(0, 0, 2**31 - 1)}


class Sail(Mitigation):
    """Applied by the generator to the starting noise (``memlab.sail``). ``target`` 0 means the model's
    calibrated target (``Generator.sail_target``)."""

    level = "latent"
    PARAMS = {"lr": Param(0.05, 1e-5, 1.0), "iters": Param(10, 1, 100), "gamma": Param(0.05, 0.0, 10.0),
              "target": Param(0.0, 0.0, 1e6)}


class Ren(Mitigation):
    """Applied in the UNet's cross-attention (``memlab.attention``). Neutral: ``c1=1,mask=off``."""

    level = "attention"
    PARAMS = {"c1": Param(1.25, 0.0, 10.0), "mask": Param("on", choices=("on", "off"))}


class NeMo(Mitigation):
    """Applied by the generator with the world's statistics (``memlab.nemo``). ``ssim`` 0 means the world's
    calibrated threshold (NeMo's 0.428 is SD v1.4's mean + 1 std); ``scale`` 1 leaves the neurons as they are."""

    level = "attention"
    PARAMS = {"theta": Param(5.0, 0.0, 100.0), "min_theta": Param(1.0, 0.0, 100.0),
              "theta_step": Param(0.25, 0.01, 10.0), "k": Param(0, 0, 100000), "ssim": Param(0.0, 0.0, 1.0),
              "samples": Param(10, 2, 64), "scale": Param(0.0, -10.0, 10.0), "refine": Param("on", choices=("on", "off")),
              "layers": Param("down_mid", choices=("down_mid", "all")), "seed": Param(1, 0, 2**31 - 1)}


class Jain(Mitigation):
    """Applied in the guidance (``memlab.generate``). Neutral: ``mode=static,t=1000,before`` = the guidance."""

    level = "guidance"
    PARAMS = {"mode": Param("static", choices=("static", "dynamic")), "t": Param(500, 0, 1000),
              "before": Param(0.0, -50.0, 50.0)}

    @classmethod
    def finalize(cls, values, given):
        if values["mode"] == "dynamic" and "before" not in given:
            values["before"] = 1.0  # the authors' dynamic transition script guides with 1.0 before it
        return values


class JainGuidance:
    """Jain et al.'s guidance schedule (``Jain``), per seed, for ``memlab.generate``: ``ratio(t, diff_norms)`` is
    the factor that turns the pipeline's guidance into the seed's (None when every seed is at the normal
    guidance)."""

    def __init__(self, jain, normal: float, n: int):
        import torch

        self.p, self.normal, self.step = jain.params, float(normal), 0
        self.done = torch.zeros(n, dtype=torch.bool)
        self.at = [None] * n
        self.prev = torch.full((n,), -1.0)
        self.prev2 = torch.full((n,), -1.0)

    def ratio(self, t: int, d):
        import torch

        d = d.cpu()
        if self.p["mode"] == "static":
            new = torch.full_like(self.done, t <= int(self.p["t"]))
        else:  # the step after the first local minimum of the guidance norm (the authors' test)
            new = (d > self.prev) & (self.prev2 > self.prev)
            self.prev2, self.prev = self.prev, d
        for i in (new & ~self.done).nonzero().flatten().tolist():
            self.at[i] = self.step
        self.done |= new
        self.step += 1
        if bool(self.done.all()):
            return None
        g = torch.where(self.done, torch.tensor(self.normal), torch.tensor(float(self.p["before"])))
        return g / self.normal

    def transition_step(self, i: int):
        return self.at[i]


MITIGATIONS: dict[str, type[Mitigation]] = {
    "none": NoMitigation, "rna": RNA, "rt": RandomTokens, "cwr": CWR, "gni": GNI, "wen": Wen,
    "ren": Ren, "nemo": NeMo, "jain": Jain, "sail": Sail}


def create_mitigation(name: str, **params) -> Mitigation:
    if name not in MITIGATIONS:
        raise MemlabError(f"unknown mitigation {name!r}; known: {', '.join(MITIGATIONS)}")
    cls = MITIGATIONS[name]
    unknown = set(params) - set(cls.PARAMS)
    if unknown:
        known = ", ".join(cls.PARAMS) or "none"
        raise MemlabError(f"mitigation {name}: unknown parameter(s) {', '.join(sorted(unknown))} (known: {known})")
    values = {k: p.parse(k, name, params.get(k, p.default)) for k, p in cls.PARAMS.items()}
    return cls(name=name, params=cls.finalize(values, set(params)))


@dataclass
class Strategy:
    """Mitigations applied in order (prompt-level first, then embedding-level, then optimization; SAIL's
    starting noise is optimized last, on the embeddings the sampling uses)."""

    mitigations: list[Mitigation]

    @property
    def name(self) -> str:
        names = [m.name for m in self.mitigations if m.name != "none"]
        return "+".join(names) or "none"

    @property
    def is_baseline(self) -> bool:
        return self.name == "none"

    def spec(self) -> str:
        return "+".join(m.spec() for m in self.mitigations)

    def label(self) -> str:
        """A short name that tells apart strategies of one mitigation ("jain" and "jain:mode=dynamic,...")."""
        return "+".join(m.label() for m in self.mitigations if m.name != "none") or "none"

    def to_dict(self) -> dict:
        return {"name": self.name, "spec": self.spec(), "steps": [m.to_dict() for m in self.mitigations]}

    def effective_prompt(self, prompt: str, gen_seed: int, tokenizer=None) -> str:
        for m in self.mitigations:
            prompt = m.apply_prompt(prompt, gen_seed, tokenizer)
        return prompt

    def apply_embeddings(self, cond, uncond, gen_seed: int):
        for m in self.mitigations:
            cond, uncond = m.apply_embeddings(cond, uncond, gen_seed)
        return cond, uncond

    def optimizer(self) -> Wen | None:
        return next((m for m in self.mitigations if isinstance(m, Wen)), None)

    def find(self, cls):
        """The strategy's mitigation of class ``cls`` (the last one, if repeated), or None."""
        return next((m for m in reversed(self.mitigations) if isinstance(m, cls)), None)

    @property
    def changes_first_pass(self) -> bool:
        """Whether the first UNet pass differs from the effective prompt's clean one (detection is then
        computed by an extra pass on the clean branches)."""
        return any(m.level in ("embedding", "optimize", "attention", "latent") for m in self.mitigations)


def strategy_label(record_mitigation: dict) -> str:
    """The short label of the strategy a record's ``mitigation`` entry describes (``Strategy.label``)."""
    try:
        return parse_strategy(record_mitigation["spec"]).label()
    except (MemlabError, KeyError, TypeError):
        return str((record_mitigation or {}).get("name", "?"))


def parse_strategy(spec: str) -> Strategy:
    """``"rna:k=2,seed=1+gni:lam=0.1"`` -> Strategy. ``"none"`` is the baseline."""
    spec = (spec or "").strip()
    if not spec:
        raise MemlabError("empty mitigation spec (use 'none' for the baseline)")
    mits = []
    aliases = {"lambda": "lam", "λ": "lam"}  # unambiguous spellings of a parameter, accepted as such
    for part in spec.split("+"):
        name, _, rest = part.strip().partition(":")
        params = {}
        for kv in filter(None, (x.strip() for x in rest.split(","))):
            k, eq, v = kv.partition("=")
            if not eq:
                raise MemlabError(f"mitigation {name}: expected key=value, got {kv!r}")
            params[aliases.get(k.strip(), k.strip())] = v.strip()
        mits.append(create_mitigation(name.strip().lower(), **params))
    return Strategy(mits)
