"""Scoring vectors under the report's protocol: the model, its slices, the baselines, beyond-accuracy and
the diversity trade-off, each user's ranking shared among the processes of an `accelerate launch`.

    ev = Evaluator(splits, EvalProtocol.for_split("test", manifest["split"]), ks=[10, 20])
    scored = ev.score(user_vecs, item_vecs)  # {"rating", "ranking", "slices"}
    ev.bar.close()

Every full ranking goes through `mmrec.evaluate.protocol` (the one evaluation rule). Under `accelerate
launch` (`Ranks.current()`) each process ranks a contiguous block of the users and the blocks are gathered
in order, so every metric is computed from the same per-user lists, in the same order, as in one process.
"""

from __future__ import annotations

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from tqdm import tqdm

from mmrec.data.splits import RunSplits
from mmrec.embedding import progress_shown
from mmrec.evaluate.metrics import UserItems, ranking_metrics
from mmrec.evaluate.protocol import EvalProtocol, evaluate_split, ranked_lists
from mmrec.serve.rerank import diversity_vectors, intra_list_diversity, mmr

# users by history length (training interactions): a user vector from 1 interaction, a handful, ...
ACTIVITY_BUCKETS = ((1, 1), (2, 5), (6, 20), (21, None))


class Ranks:
    """The processes of an `accelerate launch` (one in a plain run), and how they share the per-user work."""

    def __init__(self, index: int = 0, count: int = 1):
        self.index, self.count = index, count
        self.main = index == 0

    @classmethod
    def current(cls) -> Ranks:
        state = PartialState(cpu=not torch.cuda.is_available())  # CPU processes from torchrun form a gloo group
        return cls(state.process_index, state.num_processes)

    def gather(self, obj) -> list:
        """[every rank's `obj`] in rank order, on every rank."""
        return [obj] if self.count == 1 else gather_object([obj])

    def per_user(self, users: np.ndarray, rows_of) -> np.ndarray:
        """`rows_of(users)` (one row per user): each rank computes a contiguous block of the users, and the blocks
        are gathered in order, so every rank holds exactly the rows one process would have computed."""
        if self.count == 1:
            return rows_of(users)
        return np.concatenate(self.gather(rows_of(np.array_split(users, self.count)[self.index])))


class Evaluator:
    """Scores one (user vectors, item vectors) pair under the report's protocol."""

    def __init__(self, splits: RunSplits, protocol: EvalProtocol, ks: list[int], ranks: Ranks | None = None):
        self.splits, self.protocol, self.ks = splits, protocol, ks
        self.ranks = ranks or Ranks()
        # one tick per full ranking of the users (the model, each slice, baseline and ablation); closed by evaluate()
        self.bar = tqdm(desc="eval: scoring", unit="ranking", disable=not progress_shown() or not self.ranks.main)
        self.popularity = splits.item_popularity()
        self.warm = np.nonzero(self.popularity > 0)[0]
        self.cold = np.nonzero(self.popularity == 0)[0]
        train = splits["train"]
        activity = np.bincount(train.users[train.users >= 0], minlength=splits.num_users)
        self.buckets = {}
        for lo, hi in ACTIVITY_BUCKETS:
            name = f"{lo}+" if hi is None else str(lo) if lo == hi else f"{lo}-{hi}"
            self.buckets[name] = np.nonzero((activity >= lo) & ((activity <= hi) if hi else True))[0]

    def metrics(self, user_vecs: torch.Tensor, item_vecs: torch.Tensor, candidates="protocol",
                users: np.ndarray | None = None) -> dict:
        """`evaluate_split` of these vectors (among `candidates`, optionally of `users` only): one full ranking."""
        held = self.protocol.held_out(self.splits, users)
        out = evaluate_split(user_vecs, item_vecs, self.splits, self.protocol, tuple(self.ks), candidates, held,
                             per_user=self.ranks.per_user)  # a block of the users per rank, gathered in order
        self.bar.update(1)
        return out

    def score(self, user_vecs: torch.Tensor, item_vecs: torch.Tensor, slices: bool = True) -> dict:
        full = self.metrics(user_vecs, item_vecs)
        out = {"rating": full["rating"], "ranking": full["ranking"]}
        if slices:
            out["slices"] = {
                "warm_items": self.metrics(user_vecs, item_vecs, self.warm)["ranking"] if len(self.warm) else {},
                "cold_items": self.metrics(user_vecs, item_vecs, self.cold)["ranking"] if len(self.cold) else {},
                "user_activity": {name: self.metrics(user_vecs, item_vecs, users=users)["ranking"]
                                  for name, users in self.buckets.items() if len(users)},
            }
        return out

    def beyond(self, user_vecs: torch.Tensor, item_vecs: torch.Tensor, id_terms: torch.Tensor) -> dict:
        """Coverage, average popularity and intra-list diversity of the top-K lists of evaluated users."""
        held = self.protocol.held_out(self.splits)
        users = np.unique(held.users[held.users >= 0])
        cand = self.protocol.candidate_items(self.splits)
        cand = np.arange(self.splits.num_items) if cand is None else cand
        top = self.ranks.per_user(users, lambda block: ranked_lists(
            user_vecs, item_vecs, self.splits, block, self.protocol.masked, cand, max(self.ks)))
        return self._beyond_of(top, diversity_vectors(item_vecs, id_terms), len(cand))

    def _beyond_of(self, top: np.ndarray, q: torch.Tensor, n_candidates: int) -> dict:
        """Coverage, average popularity and intra-list diversity (1 - mean pairwise cosine of the centred q
        vectors `q`, the similarity MMR re-ranks with) of ranked lists (U, max K), at each K."""
        out = {}
        for k in self.ks:
            lists = top[:, :k]
            out[f"coverage@{k}"] = float(len(np.unique(lists)) / n_candidates)  # share of the candidate items
            out[f"avg_popularity@{k}"] = float(self.popularity[lists].mean())
            if k > 1:
                out[f"diversity@{k}"] = float(intra_list_diversity(lists, q).mean())
        return out

    def diversify(self, user_vecs: torch.Tensor, item_vecs: torch.Tensor, id_terms: torch.Tensor, lambdas: list[float],
                  pool: int, attributes: torch.Tensor | None = None, cap: int | None = None) -> dict:
        """The accuracy / diversity trade-off: for each LAMBDA, each ranked user's `pool` best candidates (masked
        as in the headline) re-ranked by MMR (`mmrec.serve.rerank`) to the largest K, then the headline's Recall and
        NDCG and the beyond-accuracy metrics of those lists. LAMBDA 0 without a cap is the headline ranking."""
        held = self.protocol.held_out(self.splits)
        cand = self.protocol.candidate_items(self.splits)
        cand = np.arange(self.splits.num_items) if cand is None else cand
        known = (held.users >= 0) & np.isin(held.items, cand)
        users = np.unique(held.users[known])  # the headline's users: a vector and a relevant candidate
        row_of = np.full(self.splits.num_users, -1, dtype=np.int64)
        row_of[users] = np.arange(len(users))
        relevant = UserItems.from_pairs(row_of[held.users[known]], held.items[known], len(users))
        k_max, pool = max(self.ks), min(pool, len(cand))
        if pool < k_max:
            raise ValueError(f"the re-ranking pool ({pool} items) is smaller than the largest K ({k_max}): pass a "
                             "larger --pool or smaller --k")
        n, rows_of = self.splits.num_items, [self.splits[name] for name in self.protocol.masked]
        pairs = np.concatenate([row_of[r.users[r.users >= 0]] * n + r.items[r.users >= 0] for r in rows_of])
        q = diversity_vectors(item_vecs, id_terms)

        def rerank(block: np.ndarray) -> np.ndarray:
            """(R, L * K) the MMR lists of the users at rows `block`, at every LAMBDA side by side."""
            top = ranked_lists(user_vecs, item_vecs, self.splits, users[block], self.protocol.masked, cand, pool)
            items, mine = torch.from_numpy(top), torch.from_numpy(users[block])  # (R, P), (R,)
            scores = torch.cat([torch.einsum("ue,upe->up", user_vecs[mine[s : s + 4096]].float(),
                                             item_vecs[items[s : s + 4096]].float()) for s in range(0, len(block), 4096)]
                               or [torch.zeros(0, top.shape[1])])  # (R, P)
            # a user with fewer unmasked candidates than the pool gets masked items at its end (as the headline
            # does past its last candidate): never choose them for diversity, only to fill a list that ran out
            masked = np.isin(block[:, None] * n + top, pairs[pairs >= 0])  # (R, P)
            scores[torch.from_numpy(masked)] = float("-inf")
            return np.concatenate([_filled(mmr(items, scores, q, k_max, lam, attributes, cap).numpy(), top)
                                   for lam in lambdas], axis=1)

        reranked = self.ranks.per_user(np.arange(len(users)), rerank)  # (U, L * K)
        rows = []
        for j, lam in enumerate(lambdas):
            lists = reranked[:, j * k_max : (j + 1) * k_max]
            ranking = ranking_metrics(lists, relevant, self.ks)
            accuracy = {f"{m}@{k}": ranking[f"{m}@{k}"] for k in self.ks for m in ("ndcg", "recall")}
            rows.append({"lambda": lam, **accuracy, **self._beyond_of(lists, q, len(cand))})
            self.bar.update(1)
        return {"method": "MMR: (1 - LAMBDA) * score min-max normalised over the pool - LAMBDA * max cosine to "
                          "the items already chosen (centred q vectors, as diversity@K)",
                "pool": pool, "max_per_attribute": cap, "users": int(len(users)), "rows": rows}


def _filled(lists: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """Re-ranked lists whose pool ran out (-1) completed with the pool's remaining items in order."""
    for row in np.nonzero((lists < 0).any(1))[0]:
        chosen = set(lists[row].tolist())
        rest = [i for i in pool[row] if i not in chosen]
        lists[row, lists[row] < 0] = rest[: int((lists[row] < 0).sum())]
    return lists
