"""The trainer: fine-tunes a causal language model as one FineTuneJob's pods describe it.

Entry points: ``python -m finetune_trainer --config config.json`` (one process, or each process of
``accelerate launch``) and ``python -m finetune_trainer.launch -- <launch command>`` (the image's
entrypoint: signals in, exit codes out). In code, :func:`finetune_trainer.run.run` does one run.

Modules, in the order a run uses them: ``config`` (the api's TrainerConfig), ``distributed``
(Accelerate), ``storage`` (URIs, downloads, output locations), ``data`` and ``batching`` (the data
pipeline), ``layout`` (packing or bucketing per device), ``model`` (LoRA, QLoRA, full),
``inputs``/``losses``/``objectives`` (tensors and losses), ``optim``, ``loop`` (the steps),
``checkpoint`` and ``state`` (resumption), ``evaluate`` (base against adapted, the gate), ``artifact``
(the published directory), ``report`` (progress hooks), ``signals`` and ``errors`` (exit codes).
"""
