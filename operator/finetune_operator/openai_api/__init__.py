"""An OpenAI-compatible fine-tuning API over FineTuneJobs and ModelAdapters (``python -m finetune_operator.openai_api``).

Pure mapping modules (``errors``, ``datafiles``, ``files``, ``jobs``, ``events``, ``models``, ``paging``) and
the I/O around them (``access``: TokenReview and SubjectAccessReview; ``filestore``: S3; ``server``: aiohttp).
"""
