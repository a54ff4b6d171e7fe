"""The toy world: procedural scenes, the tiny CLIP that ships as the offline model, its training and its evaluation."""
