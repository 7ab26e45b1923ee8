"""Synthetic tri-modal demo catalogue with a known latent structure.

Every item has a latent *style*. Its image (colour, pattern), audio (pitch, tremolo, timbre), text
(vocabulary) and attributes (tags) each express that style independently and with noise, so any one
modality recovers it above chance but not perfectly, and fusing them helps. Users like and dislike
styles; ratings follow r = 3 + affinity(user, style) + item quality + user bias + noise, and users
rate more items of the styles they like, from a skewed popularity distribution. The style is written
into `items.jsonl` as metadata and the users' tastes into `users.jsonl`, so tests and benchmarks can
check what a model learned. The output is the catalogue input format of docs/design.md.
"""

from __future__ import annotations

import colorsys
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

from mmrec.data.schema import MODALITIES
from mmrec.shard.catalogue_io import write_interactions_csv, write_items_jsonl

# (tags, adjectives, nouns) of the named styles; styles beyond these get made-up words.
THEMES = (
    ("comedy family", "sunny bright sparkling cheerful golden radiant",
     "festival meadow parade sunrise picnic carnival"),
    ("horror gothic", "gloomy shadowy haunted grim eerie cursed",
     "crypt graveyard phantom raven fog tomb"),
    ("sci-fi space", "cosmic stellar orbital galactic interstellar lunar",
     "starship nebula comet planet astronaut asteroid"),
    ("adventure maritime", "tidal salty coastal stormy marine windswept",
     "harbour reef sailor lighthouse whale voyage"),
    ("romance drama", "tender passionate gentle wistful sweet longing",
     "kiss letter wedding heart garden promise"),
    ("crime thriller", "gritty ruthless noir corrupt undercover cunning",
     "detective heist alibi gangster precinct witness"),
    ("fantasy epic", "enchanted mythic ancient arcane magical elven",
     "dragon wizard kingdom sword quest prophecy"),
    ("electronic cyberpunk", "electric synthetic neon pulsing digital robotic",
     "circuit machine arcade signal laser network"),
)
GENERIC_TAGS = ("classic", "indie", "award-winning", "short", "live", "remastered")
TEMPLATES = (
    "One {a} story about the {n} and the {a} {n}.",
    "Set near the {n}, this {a} piece follows the {n} through {a} days.",
    "The {n} returns: {a}, {a} and full of {n}.",
    "Featuring the {a} {n}, the {n} and one very {a} {n}.",
)
PATTERNS = ("stripes", "checks", "rings", "dots")
EPOCH_START = 1_577_836_800  # 2020-01-01T00:00:00Z: the interaction log starts here


@dataclass
class SyntheticCatalogueConfig:
    """Size, noise and seed of a synthetic catalogue; the defaults make the demo in seconds."""

    seed: int = 0  # everything is a deterministic function of the seed and these fields
    num_items: int = 1000  # catalogue size
    num_users: int = 400  # users in the interaction log
    num_ratings: int = 30000  # target number of ratings (approximate: per-user counts are rounded)
    num_styles: int = 8  # latent classes; the first len(THEMES) have readable words
    image_size: int = 64  # square image side in pixels
    audio_rate: int = 16000  # sample rate in Hz; >= 8000 so the highest style's harmonic fits
    audio_seconds: float = 0.5  # clip length
    p_missing_text: float = 0.05  # per-item probability that the text is absent
    p_missing_image: float = 0.10  # ... the image
    p_missing_audio: float = 0.15  # ... the audio (an item never loses all three)
    unrated_fraction: float = 0.05  # items nobody rates: content-only items for cold start
    jpeg_fraction: float = 0.2  # images saved as JPEG instead of PNG, so both formats appear
    wav_fraction: float = 0.2  # clips saved as WAV instead of FLAC
    modality_confusion: float = 0.15  # chance that one modality expresses a random style instead
    image_noise: float = 0.08  # pixel noise std (colour values in [0, 1])
    audio_noise: float = 0.05  # white noise std (peak tone amplitude is 0.5)
    text_noise: float = 0.25  # chance that a content word comes from another style's vocabulary
    attribute_noise: float = 0.2  # chance that a tag comes from outside the style's tag set
    popularity_skew: float = 1.2  # sigma of the log-normal item popularity: 0 = uniform
    selection_strength: float = 1.5  # how much users prefer rating items of styles they like
    rating_noise: float = 0.5  # std of the per-rating noise before rounding to the 0.5 grid
    min_ratings_per_user: int = 5  # floor per user, so leave-one-out splits have history

    @classmethod
    def full_size_media(cls, **overrides) -> SyntheticCatalogueConfig:
        """Media the size a real catalogue has, for throughput benchmarks of full-size encoders.

        The defaults (64 px images, 0.5 s clips) make tests fast but cost the input pipeline far less
        than real media do. Here: 320 px JPEG posters (resized and cropped to 224 for a ViT) and
        10.24 s FLAC clips (the 1,024 fbank frames AST-base takes).
        """
        return cls(**{"image_size": 320, "jpeg_fraction": 1.0, "audio_seconds": 10.24, "wav_fraction": 0.0,
                      **overrides})

    def __post_init__(self) -> None:
        for name in ("num_items", "num_users", "num_ratings", "image_size", "min_ratings_per_user"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.num_styles < 2:
            raise ValueError(f"num_styles={self.num_styles} must be >= 2 to have anything to learn")
        if self.audio_rate < 8000 or self.audio_seconds <= 0:
            raise ValueError(f"audio_rate={self.audio_rate} must be >= 8000 Hz (the highest tone's "
                             f"harmonic needs it) and audio_seconds={self.audio_seconds} > 0")
        for f in fields(self):
            if f.name in ("jpeg_fraction", "wav_fraction"):  # a file format share: all or none is fine
                if not 0.0 <= getattr(self, f.name) <= 1.0:
                    raise ValueError(f"{f.name}={getattr(self, f.name)} must be in [0, 1]")
            elif f.name.startswith("p_missing") or f.name.endswith(("_fraction", "_confusion")):
                if not 0.0 <= getattr(self, f.name) < 1.0:
                    raise ValueError(f"{f.name}={getattr(self, f.name)} must be in [0, 1)")
        rateable = self.num_items - round(self.unrated_fraction * self.num_items)
        if self.min_ratings_per_user > rateable:
            raise ValueError(f"min_ratings_per_user={self.min_ratings_per_user} exceeds the "
                             f"{rateable} rateable items; lower it or raise num_items")
        if self.num_ratings < self.num_users * self.min_ratings_per_user:
            raise ValueError(f"num_ratings={self.num_ratings} < num_users * min_ratings_per_user = "
                             f"{self.num_users * self.min_ratings_per_user}; raise num_ratings")
        if self.num_ratings > self.num_users * rateable:
            raise ValueError(f"num_ratings={self.num_ratings} exceeds the "
                             f"{self.num_users * rateable} (user, rateable item) pairs; lower it")


@dataclass(frozen=True)
class Style:
    """How one latent style shows in each modality."""

    hue: float  # in [0, 1): evenly spaced around the colour wheel
    pattern: str  # one of PATTERNS
    cycles: float  # pattern repeats per image side
    pitch_hz: float  # fundamental of the tone
    tremolo_hz: float  # amplitude-modulation rate
    harmonic: float  # relative amplitude of the second harmonic (timbre)
    adjectives: tuple[str, ...]
    nouns: tuple[str, ...]
    tags: tuple[str, ...]


def make_style(s: int, num_styles: int) -> Style:
    """The fixed (seed-independent) rendering parameters of style `s`."""
    if s < len(THEMES):
        tags, adjectives, nouns = (words.split() for words in THEMES[s])
    else:  # pronounceable made-up words, distinct per style
        rng = np.random.default_rng([7, s])
        syl = ("ka", "lo", "mi", "ven", "tor", "ul", "sa", "ri", "bex", "on", "dra", "fi")
        words = ["".join(rng.choice(syl, 3)) + f"{s}" for _ in range(12)]
        adjectives, nouns, tags = words[:6], words[6:], (f"genre-{s}a", f"genre-{s}b")
    return Style(hue=s / num_styles, pattern=PATTERNS[s % 4], cycles=3.0 + 2.0 * (s // 4 % 3),
                 pitch_hz=220.0 * 2.0 ** (3.0 * s / num_styles), tremolo_hz=4.0 + 3.0 * (s % 4),
                 harmonic=0.2 + 0.4 * (s // 4 % 2), adjectives=tuple(adjectives),
                 nouns=tuple(nouns), tags=tuple(tags))


def render_image(style: Style, size: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    """A (size, size, 3) uint8 image: the style's pattern in its hue, jittered per item."""
    y, x = (np.mgrid[0:size, 0:size] + 0.5) / size  # (H, W) each, in [0, 1)
    theta = rng.uniform(0, np.pi)  # orientation and phase are per item: not style information
    u = x * np.cos(theta) + y * np.sin(theta)
    v = -x * np.sin(theta) + y * np.cos(theta)
    k = 2 * np.pi * style.cycles * rng.uniform(0.9, 1.1)
    phase = rng.uniform(0, 2 * np.pi, 2)
    if style.pattern == "stripes":
        mask = np.sin(k * u + phase[0]) > 0
    elif style.pattern == "checks":
        mask = np.sin(k * u + phase[0]) * np.sin(k * v + phase[1]) > 0
    elif style.pattern == "rings":
        cx, cy = rng.uniform(0.3, 0.7, 2)
        mask = np.sin(k * np.hypot(x - cx, y - cy) + phase[0]) > 0
    else:  # dots: only the peaks of a product of sines
        mask = np.sin(k * u + phase[0]) * np.sin(k * v + phase[1]) > 0.5
    hue = (style.hue + rng.normal(0, 0.02)) % 1.0
    fg = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 1.0), rng.uniform(0.7, 1.0)))
    bg = fg * rng.uniform(0.2, 0.4)  # a dark shade of the same hue keeps the colour cue clean
    img = np.where(mask[..., None], fg, bg) + rng.normal(0, noise, (size, size, 3))
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def render_audio(style: Style, rate: int, seconds: float, noise: float,
                 rng: np.random.Generator) -> np.ndarray:
    """A mono float32 clip: the style's tone, tremolo and timbre, jittered per item, plus noise."""
    t = np.arange(int(rate * seconds)) / rate
    f0 = style.pitch_hz * 2.0 ** rng.normal(0, 0.02)  # ~1/4 semitone: far below style spacing
    tone = np.sin(2 * np.pi * f0 * t + rng.uniform(0, 2 * np.pi))
    tone += style.harmonic * np.sin(4 * np.pi * f0 * t)
    tremolo = 0.6 + 0.4 * np.sin(2 * np.pi * style.tremolo_hz * rng.uniform(0.9, 1.1) * t)
    fade = np.clip(np.minimum(t, seconds - t) / 0.01, 0, 1)  # 10 ms ramps: no clicks at the ends
    clip = 0.5 / (1 + style.harmonic) * tremolo * fade * tone + rng.normal(0, noise, t.size)
    return np.clip(clip, -1, 1).astype(np.float32)


def write_text(style: Style, others: list[Style], noise: float,
               rng: np.random.Generator) -> tuple[str, str]:
    """(title, text): words mostly from the style's vocabulary, some from other styles'."""
    def word(kind: str) -> str:
        src = others[rng.integers(len(others))] if rng.random() < noise else style
        pool = src.adjectives if kind == "a" else src.nouns
        return str(pool[rng.integers(len(pool))])

    title = f"The {word('a').capitalize()} {word('n').capitalize()}"
    template = TEMPLATES[rng.integers(len(TEMPLATES))]
    parts = template.split("{")
    body = parts[0] + "".join(word(p[0]) + p[2:] for p in parts[1:])  # fill each {a}/{n} afresh
    return title, f"{title}. {body}"


def draw_attributes(style: Style, others: list[Style], noise: float,
                    rng: np.random.Generator) -> list[str]:
    """1-3 distinct tags, mostly from the style's tag set."""
    noise_pool = list(GENERIC_TAGS) + [t for o in others for t in o.tags]
    tags: list[str] = []
    for _ in range(rng.integers(1, 4)):
        pool = noise_pool if rng.random() < noise else style.tags
        tag = str(pool[rng.integers(len(pool))])
        if tag not in tags:
            tags.append(tag)
    return tags


@dataclass
class Users:
    """Ground-truth tastes: affinity (U, S) to each style, bias (U,), liked/disliked style lists."""

    affinity: np.ndarray
    bias: np.ndarray
    liked: list[list[int]]
    disliked: list[list[int]]


def sample_users(cfg: SyntheticCatalogueConfig, rng: np.random.Generator) -> Users:
    """Each user likes 1-2 styles, dislikes 1-2 others and is lukewarm about the rest."""
    S = cfg.num_styles
    affinity = rng.normal(0, 0.3, (cfg.num_users, S))
    liked, disliked = [], []
    for u in range(cfg.num_users):
        order = rng.permutation(S)
        n_like = int(rng.integers(1, min(2, S - 1) + 1))
        n_dislike = int(rng.integers(1, min(2, S - n_like) + 1))
        like, dislike = order[:n_like], order[n_like:n_like + n_dislike]
        affinity[u, like] = rng.uniform(1.0, 2.0, n_like)
        affinity[u, dislike] = rng.uniform(-2.0, -1.0, n_dislike)
        liked.append(sorted(int(s) for s in like))
        disliked.append(sorted(int(s) for s in dislike))
    return Users(affinity, rng.normal(0, 0.3, cfg.num_users), liked, disliked)


def ratings_per_user(cfg: SyntheticCatalogueConfig, num_rateable: int,
                     rng: np.random.Generator) -> np.ndarray:
    """(U,) rating counts: log-normal activity like real logs, summing to about num_ratings.

    A user's count is capped (at half the rateable items when the target allows, so even the most
    active user leaves something to recommend); what the cap cuts goes to the other users.
    """
    floor = cfg.min_ratings_per_user
    twice_mean = math.ceil(2 * cfg.num_ratings / cfg.num_users)  # dense targets need a higher cap
    cap = min(num_rateable, max(floor, num_rateable // 2, twice_mean))
    activity = rng.lognormal(0, 1.0, cfg.num_users)
    counts = np.full(cfg.num_users, floor)
    for _ in range(20):  # water-filling: a few rounds settle it
        room = np.where(counts < cap, activity, 0.0)
        left = cfg.num_ratings - counts.sum()
        if left < 1 or room.sum() == 0:
            break
        counts = np.minimum(counts + np.floor(room / room.sum() * left).astype(int), cap)
    return counts


Row = tuple[int, int, float, int]  # (user index, item index, rating, timestamp)


def sample_interactions(cfg: SyntheticCatalogueConfig, styles: np.ndarray, rateable: np.ndarray,
                        users: Users, rng: np.random.Generator) -> list[Row]:
    """(user, item, rating, timestamp) rows, sorted by user then time.

    Which items a user rates: popularity x exp(selection_strength x affinity), sampled without
    replacement (Gumbel top-k). How active a user is: log-normal, like real logs.
    """
    n = len(styles)
    popularity = np.where(rateable, rng.lognormal(0, cfg.popularity_skew, n), 0.0)
    quality = rng.normal(0, 0.4, n)
    counts = ratings_per_user(cfg, int(rateable.sum()), rng)
    rows = []
    with np.errstate(divide="ignore"):  # log(0) = -inf keeps unrated items out of every top-k
        log_pop = np.log(popularity)
    for u in range(cfg.num_users):
        keys = log_pop + cfg.selection_strength * users.affinity[u, styles] + rng.gumbel(size=n)
        items = np.argsort(-keys, kind="stable")[: counts[u]]
        raw = 3 + users.affinity[u, styles[items]] + quality[items] + users.bias[u]
        raw += rng.normal(0, cfg.rating_noise, items.size)
        ratings = np.clip(np.round(2 * raw) / 2, 0.5, 5)  # the 0.5-star grid of MovieLens
        # a start date within the first year, then gaps of minutes to weeks (mean ~2 days)
        start = EPOCH_START + int(rng.integers(0, 365 * 86400))
        times = start + np.cumsum(1 + rng.exponential(2 * 86400, items.size).astype(int))
        rows += [(u, int(i), float(r), int(t)) for i, r, t in zip(items, ratings, times)]
    return rows


def _ids(prefix: str, n: int) -> list[str]:
    width = max(4, len(str(n)))
    return [f"{prefix}-{i:0{width}d}" for i in range(1, n + 1)]


def _clear_old_media(media: Path) -> None:
    """Remove media a previous run wrote here, so a stale .png never sits beside a new .jpg."""
    for pattern in ("item-*.png", "item-*.jpg", "item-*.flac", "item-*.wav"):
        for path in media.glob(pattern):
            path.unlink()


@dataclass
class ItemPlan:
    """What to write for one item, drawn up front so the per-item loop only renders."""

    item_id: str
    style: int  # the latent ground truth
    shown: tuple[int, int, int]  # the style each modality expresses (text, image, audio)
    present: tuple[bool, bool, bool]  # which modalities exist, in MODALITIES order
    image_ext: str  # "png" or "jpg"
    audio_ext: str  # "flac" or "wav"


def plan_items(cfg: SyntheticCatalogueConfig,
               rng: np.random.Generator) -> tuple[list[ItemPlan], np.ndarray]:
    """Style, modalities, confusions and file formats of every item, and a (N,) rateable mask."""
    n, S = cfg.num_items, cfg.num_styles
    styles = rng.integers(S, size=n)
    p_missing = np.array([cfg.p_missing_text, cfg.p_missing_image, cfg.p_missing_audio])
    present = rng.random((n, 3)) >= p_missing
    for i in np.flatnonzero(~present.any(axis=1)):  # never all three missing: keep one at random
        present[i, rng.integers(3)] = True
    # usually a modality shows the item's own style; with modality_confusion, a random one
    shown = np.where(rng.random((n, 3)) < cfg.modality_confusion, rng.integers(S, size=(n, 3)),
                     styles[:, None])
    jpeg, wav = rng.random(n) < cfg.jpeg_fraction, rng.random(n) < cfg.wav_fraction
    rateable = np.ones(n, bool)
    rateable[rng.permutation(n)[: round(cfg.unrated_fraction * n)]] = False
    plans = [ItemPlan(item_id, int(styles[i]), tuple(int(s) for s in shown[i]),
                      tuple(bool(p) for p in present[i]), "jpg" if jpeg[i] else "png",
                      "wav" if wav[i] else "flac")
             for i, item_id in enumerate(_ids("item", n))]
    return plans, rateable


def _others(table: list[Style], s: int) -> list[Style]:
    return table[:s] + table[s + 1:]


def write_item(plan: ItemPlan, out: Path, table: list[Style], cfg: SyntheticCatalogueConfig,
               rng: np.random.Generator) -> dict:
    """Render and save one item's media; return its items.jsonl record."""
    t_style, i_style, a_style = (table[s] for s in plan.shown)
    title, text = write_text(t_style, _others(table, plan.shown[0]), cfg.text_noise, rng)
    # the title is metadata, present even without a description, as in real catalogues
    record: dict = {"item_id": plan.item_id, "title": title}
    if plan.present[0]:
        record["text"] = text
    if plan.present[1]:
        record["image"] = f"media/{plan.item_id}.{plan.image_ext}"
        pixels = render_image(i_style, cfg.image_size, cfg.image_noise, rng)
        options = {"quality": 90} if plan.image_ext == "jpg" else {}
        Image.fromarray(pixels).save(out / record["image"], **options)
    if plan.present[2]:
        record["audio"] = f"media/{plan.item_id}.{plan.audio_ext}"
        clip = render_audio(a_style, cfg.audio_rate, cfg.audio_seconds, cfg.audio_noise, rng)
        sf.write(out / record["audio"], clip, cfg.audio_rate, subtype="PCM_16")
    # attributes describe the item itself, so they follow its style, not a confused one
    record["attributes"] = draw_attributes(table[plan.style], _others(table, plan.style),
                                           cfg.attribute_noise, rng)
    record["style"] = plan.style
    return record


def write_synthetic_catalogue(out_dir: str | Path,
                              config: SyntheticCatalogueConfig | None = None) -> dict:
    """Write `items.jsonl`, `interactions.csv`, `users.jsonl` and `media/` under `out_dir`.

    Args:
        out_dir: catalogue folder; created if needed. Media paths in items.jsonl are relative to it.
        config: sizes, noise and seed; the defaults when None.

    Returns:
        Paths (`items`, `interactions`, `users`, `media`, as strings) and counts (`num_items`,
        `num_users`, `num_ratings`, `num_rated_items`, `present`: modality -> items that have it).
    """
    cfg = config or SyntheticCatalogueConfig()
    out, media = Path(out_dir), Path(out_dir) / "media"
    media.mkdir(parents=True, exist_ok=True)
    _clear_old_media(media)
    # independent streams: resizing the user side leaves the items unchanged, and vice versa
    seeds = np.random.SeedSequence(cfg.seed).spawn(4)
    item_rng, user_rng, log_rng = (np.random.default_rng(s) for s in seeds[:3])
    table = [make_style(s, cfg.num_styles) for s in range(cfg.num_styles)]
    plans, rateable = plan_items(cfg, item_rng)
    # a stream per item: rendering one item never shifts another item's random draws
    item_rngs = map(np.random.default_rng, seeds[3].spawn(cfg.num_items))
    write_items_jsonl(out / "items.jsonl", (write_item(plan, out, table, cfg, rng)
                                            for plan, rng in zip(plans, item_rngs)))

    users = sample_users(cfg, user_rng)
    user_ids = _ids("user", cfg.num_users)
    styles = np.array([p.style for p in plans])
    rows = sample_interactions(cfg, styles, rateable, users, log_rng)
    write_interactions_csv(out / "interactions.csv",
                           ((user_ids[u], plans[i].item_id, r, t) for u, i, r, t in rows))
    with open(out / "users.jsonl", "w", encoding="utf-8") as f:
        for u, user_id in enumerate(user_ids):
            f.write(json.dumps({"user_id": user_id, "liked_styles": users.liked[u],
                                "disliked_styles": users.disliked[u]}) + "\n")

    return {
        "items": str(out / "items.jsonl"), "interactions": str(out / "interactions.csv"),
        "users": str(out / "users.jsonl"), "media": str(media),
        "num_items": cfg.num_items, "num_users": cfg.num_users, "num_ratings": len(rows),
        "num_rated_items": len({i for _, i, _, _ in rows}),
        "present": {m: int(sum(p.present[k] for p in plans)) for k, m in enumerate(MODALITIES)},
    }
