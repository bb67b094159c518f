"""Starting jobs: SLURM submission through submitit (pre-training, sharding job arrays) and the demo.

Nothing here computes anything: it resolves configs, asks the scheduler for resources and, inside
the job, hands each task its rank before calling ``pipeline.train`` or ``data_prep.shard_mimic``.
"""
