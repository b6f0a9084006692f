"""What every run shares: settings and their merge, presets, the loop driver, checkpoints and resume,
DDP, batching, optimizers, run folders and logs, threads, the teacher cache, evaluation and latency
measurement. It imports the library layers below it, never ``pipelines``, ``api`` or ``cli``."""
