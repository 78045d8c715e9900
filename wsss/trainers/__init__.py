"""The trainers: what a learned stage trains, each on the one loop of :mod:`wsss.fit`.

- :mod:`.segmentation`: DeepLab / any zoo model on (image, mask) pairs (``wsss train``, BoxSup's rounds).
- :mod:`.cam_classifier`: the GAP classifier behind CAM seeds (``wsss seeds --method cam``) and its checkpoints.

The saliency net's trainer is small and lives with its method (:func:`wsss.seeds.saliency.train_saliency`).
Runners (stage folders, resume, manifests) are in :mod:`wsss.stages`; the trainers never open a stage folder's
manifest.
"""
