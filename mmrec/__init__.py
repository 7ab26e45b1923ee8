"""mmrec: a multimodal recommendation engine.

Catalogue (text, image, audio; any may be missing) + interaction log in; WebDataset shards,
a trained fusion model, item/user embeddings and an honest offline evaluation out.
"""

__version__ = "0.1.0"
