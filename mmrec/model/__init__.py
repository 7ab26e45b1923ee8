"""The model: config, `RecModel` (item and user towers), training tasks, and the factory that builds,
saves and loads it. `build_model` here is what training and the feature cache both call.
"""
