"""Approximate nearest-neighbour indexes over an EMB folder for `recommend` and `similar` (faiss).

`mmrec index --emb EMB` writes one index per score into EMB/index/:

- `recommend.faiss`: the item rows of `item_embeddings.safetensors`, searched by inner product with the
  user's row, i.e. the model's own score (docs/design.md "Ranking score contract");
- `similar.faiss`: `Embeddings.similarity_vectors()` (centred unit q columns), where inner product = cosine;
- `index.json`: kind, resolved parameters, item count and the sha256 of the EMB files it was built from.

Kinds: `flat` (exact, every item scored), `hnsw` (a navigable small-world graph, Malkov & Yashunin 2016,
https://arxiv.org/abs/1603.09320) and `ivfpq` (inverted lists of product-quantised codes, Jegou et al.
2011, https://ieeexplore.ieee.org/document/5432202: the smallest in memory). `auto` is flat below
`flat_below` items and hnsw from there. flat and hnsw use faiss's inner-product metric: on embedding-like
vectors it gave hnsw far higher recall than the usual reduction of inner product to L2 search (an extra
column that puts every item on one sphere): 0.99 against 0.70 recall@10 at efSearch 128 on 20k clustered
items. ivfpq is the other way round: its k-means cells are L2 cells, so it searches the reduced vectors
(`_on_sphere`).

Whatever the kind, the candidates an index returns are re-scored exactly against the vectors in memory
and ordered by score, ties to the lower item index, as exact search orders them: scores are always the
engine's, only which items make the list can differ. Excluded items (a user's seen items, the query
item) are over-fetched for and filtered out, never ranked. An index whose EMB files changed since it was
built (`mmrec embed`, `mmrec embed-items`) is stale: `load_index` ignores it with a warning, and serving
ranks every item exactly until `mmrec index` is run again.

    build_indexes("RUN/emb", IndexConfig(kind="hnsw", ef_search=256))
    emb = Embeddings.load("RUN/emb")
    index = load_index("RUN/emb", emb, "recommend")  # None when absent or stale: exact search
    recommend(emb, "42", k=10, index=index)
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmrec import __version__
from mmrec.config_io import apply_overrides, from_dict, to_dict
from mmrec.files import FolderLock, replace_with, sha256_of, temp_sibling
from mmrec.serve.embeddings import Embeddings

log = logging.getLogger(__name__)

INDEX_DIR = "index"  # EMB/index/
META = "index.json"
FORMAT = 1  # index.json's layout; a reader ignores (with a warning) any other
KINDS = ("flat", "hnsw", "ivfpq")
SCORES = ("recommend", "similar")
SOURCES = ("item_embeddings.safetensors", "item_ids.json")  # what both indexes are computed from


@dataclass
class IndexConfig:
    """How `mmrec index` builds the indexes and how serving searches them (`key=value` on the command line)."""

    kind: str = "auto"  # auto | flat | hnsw | ivfpq; auto = flat below flat_below items, else hnsw
    flat_below: int = 100_000  # auto's threshold: below it an exact search takes a few milliseconds a query
    hnsw_m: int = 32  # hnsw: graph neighbours per item; more = higher recall, more memory (8 * m bytes an item)
    ef_construction: int = 200  # hnsw: candidate list while building; higher = a better graph, a slower build
    ef_search: int = 128  # hnsw: candidate list while searching (at least k + excluded): recall against latency
    nlist: int = 0  # ivfpq: k-means cells; 0 = 4 * sqrt(items)
    nprobe: int = 32  # ivfpq: cells searched per query: recall against latency
    pq_m: int = 0  # ivfpq: sub-quantisers (bytes an item at 8 bits); 0 = one per 3 dimensions
    pq_bits: int = 8  # ivfpq: bits per sub-quantiser code
    refine: int = 4  # ivfpq: candidates fetched per wanted item and re-scored exactly (PQ scores are coarse)

    def __post_init__(self):
        if self.kind not in ("auto", *KINDS):
            raise ValueError(f"unknown index kind {self.kind!r}; expected one of {['auto', *KINDS]}")
        for name in ("flat_below", "hnsw_m", "ef_construction", "ef_search", "nprobe", "refine"):
            if getattr(self, name) < 1:
                raise ValueError(f"index parameter {name} must be >= 1, got {getattr(self, name)}")
        if self.nlist < 0 or self.pq_m < 0:
            raise ValueError("index parameters nlist and pq_m must be >= 0 (0 = chosen from the catalogue size)")
        if not 1 <= self.pq_bits <= 16:
            raise ValueError(f"index parameter pq_bits must be in 1..16, got {self.pq_bits}")

    @classmethod
    def from_args(cls, kind: str = "auto", params: list[str] | None = None) -> IndexConfig:
        """`--kind` plus `key=value` parameters, checked like a run config (unknown keys name the valid ones)."""
        return from_dict(cls, apply_overrides({"kind": kind}, params or []), "index")

    def resolve(self, items: int, dim: int) -> IndexConfig:
        """The concrete kind and sizes for a catalogue of `items` rows of `dim` columns."""
        kind = self.kind if self.kind != "auto" else ("flat" if items < self.flat_below else "hnsw")
        cfg = IndexConfig(**{**to_dict(self), "kind": kind})
        if kind == "ivfpq":
            # k-means wants ~39 points a cell; faiss refuses fewer points than cells or than 2^pq_bits codes
            cfg.nlist = self.nlist or max(1, min(round(4 * math.sqrt(items)), items // 39))
            cfg.pq_m = self.pq_m or math.ceil((dim + 1) / 3)  # dim + 1: see `_on_sphere`
            if items < max(cfg.nlist, 2**cfg.pq_bits):
                raise ValueError(f"ivfpq with nlist={cfg.nlist}, pq_bits={cfg.pq_bits} needs at least "
                                 f"{max(cfg.nlist, 2**cfg.pq_bits)} items, the catalogue has {items}: use "
                                 "--kind flat (exact, fast at this size) or smaller nlist / pq_bits")
        return cfg


def _faiss():
    try:
        import faiss
    except ImportError as e:
        raise ValueError("nearest-neighbour indexes need faiss: pip install 'mmrec[faiss]'") from e
    return faiss


def _padded(vectors: np.ndarray, dim: int) -> np.ndarray:
    """Zero columns up to `dim`: inner products with the indexed rows stay what they were (see `_on_sphere`)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.shape[1] == dim:
        return vectors
    return np.ascontiguousarray(np.pad(vectors, ((0, 0), (0, dim - vectors.shape[1]))))


def _on_sphere(vectors: np.ndarray) -> np.ndarray:
    """Rows x -> [x, sqrt(M^2 - |x|^2)], M the largest norm (Bachrach et al. 2014,
    https://doi.org/10.1145/2645710.2645741).

    Every row then has norm M, so for a query padded with a zero, |[y, 0] - x'|^2 = |y|^2 + M^2 - 2 <y, x>:
    the nearest row in L2 is the one of largest inner product. IVF needs it: its k-means cells are L2
    cells, and assigned by inner product, items pile into the cells of long centroids (recall@10 0.84
    against 0.99 at nprobe 32 on 20k clustered items, benchmarks/ann.py's data).
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.einsum("ij,ij->i", vectors, vectors)
    return np.hstack([vectors, np.sqrt(np.maximum(norms.max() - norms, 0))[:, None]]).astype(np.float32)


def build_index(vectors: np.ndarray, cfg: IndexConfig):
    """A faiss index of `cfg.kind` (already resolved) over the rows of `vectors` (N, d), searched for the
    largest inner products; queries are padded with zeros to the index's `d`."""
    faiss = _faiss()
    n, d = vectors.shape
    if cfg.kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif cfg.kind == "hnsw":
        index = faiss.index_factory(d, f"HNSW{cfg.hnsw_m},Flat", faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = cfg.ef_construction
    elif cfg.kind == "ivfpq":
        vectors = _on_sphere(vectors)
        d = cfg.pq_m * math.ceil((d + 1) / cfg.pq_m)  # product quantisation splits a row into equal parts
        # "np": no polysemous training (a reordering of the codes for Hamming pre-filtering, which this search
        # does not use): with 8-bit codes it takes minutes even on a thousand items
        index = faiss.index_factory(d, f"IVF{cfg.nlist},PQ{cfg.pq_m}x{cfg.pq_bits}np", faiss.METRIC_L2)
        index.train(_padded(vectors, d))
    else:
        raise ValueError(f"index kind {cfg.kind!r} is not resolved: call IndexConfig.resolve first")
    index.add(_padded(vectors, d))
    return index


class ItemIndex:
    """One score's faiss index plus the exact vectors (N, d) its candidates are re-scored with.

    `search` returns what exact search over `vectors` would (same scores, ties to the lower index) for
    every item the index retrieves; `top` is `mmrec.serve.embeddings.top_k_items`'s shape for one query.
    """

    def __init__(self, index, vectors, cfg: IndexConfig):
        self.index, self.kind = index, cfg.kind
        self.vectors = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))  # a view of a CPU tensor
        if index.ntotal != len(self.vectors) or index.d < self.vectors.shape[1]:
            raise ValueError(f"the index holds {index.ntotal} vectors of {index.d} dims, the embeddings "
                             f"{len(self.vectors)} of {self.vectors.shape[1]}")
        # ivfpq's scores are approximate: fetch more, re-score exactly; flat and hnsw scores are exact already
        self.refine = cfg.refine if cfg.kind == "ivfpq" else 1
        self.exact_fallbacks = 0  # queries answered exactly because the index returned too few items
        self.set_search(ef_search=cfg.ef_search, nprobe=cfg.nprobe)

    def __len__(self) -> int:
        return self.index.ntotal

    def set_search(self, ef_search: int | None = None, nprobe: int | None = None) -> None:
        """The search-time recall / latency knob of this kind (the other one is ignored)."""
        space = _faiss().ParameterSpace()
        if self.kind == "hnsw" and ef_search is not None:
            space.set_index_parameter(self.index, "efSearch", ef_search)
        if self.kind == "ivfpq" and nprobe is not None:
            space.set_index_parameter(self.index, "nprobe", nprobe)

    def search(self, queries, k: int, exclude: list | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-`k` items for each query row (B, d), never one of `exclude[b]` (a set of item indices).

        Returns item indices (B, k) and their exact scores; rows with fewer than k items left to rank are
        padded with -1 and -inf, as exact search would give.
        """
        queries = np.ascontiguousarray(np.asarray(queries, dtype=np.float32)).reshape(-1, self.vectors.shape[1])
        n, rows = len(self), len(queries)
        banned = [np.unique(np.fromiter(e, dtype=np.int64)) if e else np.zeros(0, np.int64)
                  for e in (exclude if exclude is not None else [()] * rows)]
        if len(banned) != rows:
            raise ValueError(f"{rows} queries but {len(banned)} exclusion sets")
        banned = [b[(b >= 0) & (b < n)] for b in banned]
        want = [min(k, n - len(b)) for b in banned]
        ids = np.full((rows, k), -1, dtype=np.int64)
        scores = np.full((rows, k), -np.inf, dtype=np.float32)
        # over-fetch: of k + |excluded| distinct items at most |excluded| are filtered out, so k remain
        fetch = min(n, (k + max((len(b) for b in banned), default=0)) * self.refine)
        _, found = self.index.search(_padded(queries, self.index.d), fetch)  # (B, fetch), -1 = none
        for row, cand in enumerate(found):
            cand = cand[cand >= 0]
            cand = cand[~np.isin(cand, banned[row])]
            if len(cand) < want[row]:
                # the index ran out before `fetch` (the probed IVF cells hold fewer items, a graph region it
                # did not reach): this query's exact answer rather than a shorter list
                self.exact_fallbacks += 1
                every = self.vectors @ queries[row]  # (N,)
                every[banned[row]] = -np.inf
                cand = np.argpartition(-every, want[row] - 1)[:want[row]] if want[row] else cand
            s = self.vectors[cand] @ queries[row]
            order = np.lexsort((cand, -s))[:want[row]]  # by score, ties to the lower index
            ids[row, :len(order)], scores[row, :len(order)] = cand[order], s[order]
        return ids, scores

    def top(self, query, k: int, exclude=frozenset()) -> list[tuple[int, float]]:
        """(item index, score) for one query vector (d,), best first."""
        ids, scores = self.search(np.asarray(query, dtype=np.float32)[None], k, [exclude])
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]


def fingerprint(emb_dir: str | Path) -> dict[str, str]:
    """sha256 of the EMB files the indexes are computed from: a change means a stale index."""
    emb_dir = Path(emb_dir)
    if not (emb_dir / SOURCES[0]).is_file():
        raise ValueError(f"{emb_dir} holds no embeddings: run `mmrec embed --run RUN --data DATA --out {emb_dir}` "
                         "first")
    return {name: sha256_of(emb_dir / name) for name in SOURCES}


def _score_vectors(emb: Embeddings, score: str):
    return emb.items if score == "recommend" else emb.similarity_vectors()


def build_indexes(emb_dir: str | Path, cfg: IndexConfig | None = None) -> dict:
    """Build the `recommend` and `similar` indexes of EMB into EMB/index/ (replaced whole); returns index.json."""
    faiss = _faiss()
    emb_dir = Path(emb_dir)
    built_from = fingerprint(emb_dir)  # before reading: embeddings rewritten meanwhile make the index stale
    with FolderLock(emb_dir):  # not while `mmrec embed` writes the same folder
        emb = Embeddings.load(emb_dir)
        n = len(emb.item_ids)
        if n == 0:
            raise ValueError(f"{emb_dir} holds no items: nothing to index")
        resolved = (cfg or IndexConfig()).resolve(n, emb.items.shape[1])
        tmp = temp_sibling(emb_dir / INDEX_DIR, ".partial")
        tmp.mkdir()
        scores = {}
        for score in SCORES:
            vectors = _score_vectors(emb, score).numpy()
            start = time.perf_counter()
            index = build_index(vectors, resolved)
            seconds = time.perf_counter() - start
            faiss.write_index(index, str(tmp / f"{score}.faiss"))  # faiss's own binary format, no pickle
            scores[score] = {"file": f"{score}.faiss", "dim": int(vectors.shape[1]), "seconds": round(seconds, 3),
                             "bytes": (tmp / f"{score}.faiss").stat().st_size}
        meta = {"format": FORMAT, "created_by": f"mmrec {__version__}", "faiss": faiss.__version__,
                "kind": resolved.kind, "items": n, "config": to_dict(resolved), "built_from": built_from,
                "scores": scores}
        (tmp / META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        replace_with(tmp, emb_dir / INDEX_DIR)  # readers see the old index whole, or the new one
    return meta


def load_index(emb_dir: str | Path, emb: Embeddings, score: str) -> ItemIndex | None:
    """EMB/index's index for `score` ("recommend" or "similar") over `emb`, or None: exact search.

    None without a warning when there is no index; None with a warning saying how to rebuild it when the
    index is stale (the embeddings changed since), unreadable, or faiss is not installed. A stale index is
    never used: its rows would be other items' vectors.
    """
    if score not in SCORES:
        raise ValueError(f"unknown score {score!r}; expected one of {list(SCORES)}")
    folder = Path(emb_dir) / INDEX_DIR
    if not (folder / META).is_file():
        return None
    try:
        faiss = _faiss()
    except ValueError as e:
        log.warning("ignoring %s: %s; ranking every item exactly", folder, e)
        return None
    rebuild = f"ranking every item exactly; rebuild it with `mmrec index --emb {emb_dir}`"
    try:
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError(f"it is not index.json format {FORMAT}, the one this mmrec reads")
        cfg = from_dict(IndexConfig, meta["config"], str(folder / META))
        if meta.get("built_from") != fingerprint(emb_dir):
            raise ValueError("it was built from other embeddings (re-embedded or items added since)")
        index = ItemIndex(faiss.read_index(str(folder / meta["scores"][score]["file"])), _score_vectors(emb, score),
                          cfg)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:  # RuntimeError: faiss on a damaged file
        log.warning("ignoring %s: %s; %s", folder, str(e).splitlines()[0] if str(e) else type(e).__name__, rebuild)
        return None
    log.info("searching %s (%s, %d items)", folder / meta["scores"][score]["file"], index.kind, len(index))
    return index
