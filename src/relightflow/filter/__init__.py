"""Filter stage: score every image's lighting (CLIP prompt pairs or image statistics), then select.

- :mod:`relightflow.filter.stats`: ``lighting_score(image)`` from measured statistics (no weights).
- :mod:`relightflow.filter.clip`: open_clip antonym-pair scorer (CLIP-IQA style).
- :mod:`relightflow.filter.data`: the reduced-size decoding data path (DataLoader workers).
- :mod:`relightflow.filter.score`: ``ScoreStage`` (rule ``score_lighting``) and the backend registry.
- :mod:`relightflow.filter.select`: ``select_images`` (checkpoint ``select``): cut, dedup, splits.
- :mod:`relightflow.filter.plots`: score histogram and contact sheet.
"""
