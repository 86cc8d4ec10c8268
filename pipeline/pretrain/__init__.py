"""Pretraining one RunSpec with Ray Train (paper Sec. 4.3-4.4, Table 3 / Appendix B.1 recipe).

One job per module, from the data on disk up to the command line:

- ``checkpoint``: the checkpoint's state file, read back as data, and the RNG states in it;
- ``recipe``: the recipe's maths (parameter groups, LR schedule, loss, precision@1), shared with
  fine-tuning;
- ``session``: where the loop runs (a Ray Train worker or this process) and the collectives;
- ``loop``: the worker's loop (:class:`~pipeline.pretrain.loop.PretrainPlan`, ``Trainer``,
  ``Progress``, ``train_loop``);
- ``launch``: the driver's side (``plan_run``, the MLflow run, Ray Train, ``pretrain``);
- ``__main__``: ``python -m pipeline.pretrain --model NAME --data PATH ...``.

The package itself imports nothing, so that the transfer stages can read a checkpoint
(``pipeline.pretrain.checkpoint``) without loading Ray Train.
"""
