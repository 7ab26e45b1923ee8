"""mmrec: a multimodal recommendation engine.

Catalogue (text, image, audio; any may be missing) + interaction log in; WebDataset shards,
a trained fusion model, item/user embeddings and an honest offline evaluation out.

    import mmrec
    report = mmrec.shard_catalogue("items.jsonl", "interactions.csv", "data", mmrec.SplitConfig("cold-items"))
    cfg = mmrec.load_run_config("tiny")
    mmrec.train(cfg, "data", "run")
    mmrec.embed("run", "data", "emb")
    report, paths = mmrec.evaluate_run("run", "data", "report")
    rec = mmrec.Recommender.from_run("run")  # then rec.recommend(user=...), .similar, .search, .embed_items

The flow and the files each step writes: docs/design.md. Names are imported on first use, so
`import mmrec` stays cheap (no torch until a model or a loader is touched).
"""

import importlib

__version__ = "0.2.0"

# public name -> module that defines it
_API = {
    # configs
    "RunConfig": "mmrec.config", "DataConfig": "mmrec.config", "TrainConfig": "mmrec.config",
    "load_run_config": "mmrec.config", "list_presets": "mmrec.config",
    "ModelConfig": "mmrec.model.config", "TaskConfig": "mmrec.model.config",
    # data
    "shard_catalogue": "mmrec.shard.writer", "ShardOptions": "mmrec.shard.writer",
    "SplitConfig": "mmrec.shard.protocols", "load_manifest": "mmrec.data.dataset",
    "Dataset": "mmrec.data.dataset", "RunVocabulary": "mmrec.data.vocabulary", "RunSplits": "mmrec.data.splits",
    "write_synthetic_catalogue": "mmrec.shard.synthetic", "SyntheticCatalogueConfig": "mmrec.shard.synthetic",
    "audio_handler": "mmrec.data.media",  # wds.WebDataset(urls).decode("pil", mmrec.audio_handler)
    # model
    "create_model": "mmrec.model.factory", "build_model": "mmrec.model.factory",
    "load_model": "mmrec.model.factory", "save_model": "mmrec.model.factory",
    "ModelSizes": "mmrec.model.factory", "RecModel": "mmrec.model.model",
    "from_pretrained": "mmrec.model.factory", "export_model": "mmrec.model.factory",
    # training, embedding, caching
    "train": "mmrec.training.loop", "embed": "mmrec.embedding", "cache_features": "mmrec.training.cache",
    # evaluation
    "EvalProtocol": "mmrec.evaluate.protocol", "evaluate_run": "mmrec.evaluate.evaluation",
    "write_report": "mmrec.evaluate.report",
    # serving
    "Embeddings": "mmrec.serve.embeddings", "recommend": "mmrec.serve.embeddings", "similar": "mmrec.serve.embeddings",
    "search": "mmrec.serve.embeddings",
    "Recommender": "mmrec.serve.recommender", "Recommendation": "mmrec.serve.recommender", "Recommendations": "mmrec.serve.recommender",
}

__all__ = ["__version__", *sorted(_API)]


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'mmrec' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
