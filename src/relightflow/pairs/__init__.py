"""Pairs stage: subject masks, albedo and degraded training inputs for each selected image.

``segment`` (SAM2 / SAM3 / classical GrabCut / none) writes one mask per image; ``degrade`` flattens the
lighting (Retinex or Marigold albedo) and re-lights the subject badly in N seeded variants (soft shading,
cast shadows, colour casts, low-key, flat, harsh side light). The degraded image is the training input and
the original image the target.
"""
