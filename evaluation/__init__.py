"""Sample-quality evaluation (pure torch / numpy / scipy; imports nothing else of ours).

Modules, one concept each:

* `inception`: the TF-FID InceptionV3 (torch-fidelity / pytorch-fid layout, loaded from a user file).
* `features`: evaluators by name ("inception", "efficientnet-lite0"), `FeatureBatch`, `EvaluatorInfo`,
  `minmax_stretch` (the reference's preprocessing quirk, off by default).
* `metrics`: `frechet_distance`, `inception_score`, `precision_recall_density_coverage`.
* `stats`: `StatisticsAccumulator` (streamed float64 moments + reservoir of features),
  `FeatureStatistics` (.npz with the evaluator recorded), `check_comparable`.
* `scoring`: `score_samples` (the reference protocol on features and logits) -> `Scores`.
* `report`: `EvaluationResult`, `write_report` (JSON + markdown naming the evaluator and sampling).
* `sample_store`: shards of generated samples and features with commit markers (the evaluate job).
* `classifier`: a small CNN trained on real images that checks samples show their class.
"""
